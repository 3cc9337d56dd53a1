//! The fixed reply texts, each with its RFC 3463 enhanced status code (RFC 2034).
//!
//! Replies that name the host are `(prefix, suffix)` pairs written around the host name.

pub const OK: &[u8] = b"250 2.0.0 Ok\r\n";
pub const MAIL_OK: &[u8] = b"250 2.1.0 Ok\r\n";
pub const RCPT_OK: &[u8] = b"250 2.1.5 Ok\r\n";
pub const QUEUED: &[u8] = b"250 2.0.0 Ok: queued as ";
pub const DATA_GO_AHEAD: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
pub const VRFY: &[u8] =
    b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n";
pub const HELP: &[u8] =
    b"214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n";
pub const BYE: &[u8] = b"221 2.0.0 Bye\r\n";

pub const UNKNOWN: &[u8] = b"500 5.5.1 Error: command not recognized\r\n";
pub const LINE_TOO_LONG: &[u8] = b"500 5.5.2 Error: line too long\r\n";
pub const BARE_LF_COMMAND: &[u8] = b"500 5.5.2 Error: bare <LF> received\r\n";
pub const BAD_SENDER: &[u8] = b"501 5.1.7 Bad sender address syntax\r\n";
pub const BAD_RECIPIENT: &[u8] = b"501 5.1.3 Bad recipient address syntax\r\n";
pub const BAD_PARAMETER: &[u8] = b"555 5.5.4 Unsupported option\r\n";
pub const NEED_HELO: &[u8] = b"503 5.5.1 Error: send HELO/EHLO first\r\n";
pub const BDAT_NEEDS_EHLO: &[u8] = b"503 5.5.1 Error: BDAT needs EHLO (CHUNKING)\r\n";
pub const NEED_MAIL: &[u8] = b"503 5.5.1 Error: need MAIL command\r\n";
pub const NEED_RCPT: &[u8] = b"503 5.5.1 Error: need RCPT command\r\n";
pub const NESTED_MAIL: &[u8] = b"503 5.5.1 Error: nested MAIL command\r\n";
pub const DATA_AFTER_BDAT: &[u8] = b"503 5.5.1 Error: DATA after BDAT\r\n";
pub const RCPT_AFTER_BDAT: &[u8] = b"503 5.5.1 Error: RCPT after BDAT\r\n";
pub const TOO_BIG: &[u8] = b"552 5.3.4 Error: message file too big\r\n";
pub const TOO_MANY_RECIPIENTS: &[u8] = b"452 4.5.3 Error: too many recipients\r\n";
pub const RELAY_DENIED: &[u8] = b"550 5.7.1 Error: recipient domain not accepted here\r\n";
pub const BARE_LF_DATA: &[u8] =
    b"550 5.6.0 Error: bare <LF> or <CR> in message data (see RFC 5321 2.3.8)\r\n";
pub const SPOOL_FAILED: &[u8] = b"451 4.3.0 Error: queue file write error\r\n";
pub const EARLY_TALKER: &[u8] = b"554 5.5.1 Error: client sent data before the greeting\r\n";

pub const TIMEOUT: (&str, &str) = ("421 4.4.2 ", " Error: timeout exceeded\r\n");
pub const TOO_MANY_ERRORS: (&str, &str) = ("421 4.7.0 ", " Error: too many errors\r\n");
pub const TOO_MANY_JUNK: (&str, &str) = ("421 4.7.0 ", " Error: too many junk commands\r\n");
pub const FOREIGN_PROTOCOL: (&str, &str) =
    ("421 4.7.0 ", " Error: this is an SMTP server, not HTTP\r\n");
pub const SHUTTING_DOWN: (&str, &str) = (
    "421 4.3.2 ",
    " Service shutting down, closing transmission channel\r\n",
);
pub const TOO_MANY_CONNECTIONS: (&str, &str) = ("421 4.3.2 ", " Error: too many connections\r\n");
pub const TOO_MANY_FROM_ADDRESS: (&str, &str) = (
    "421 4.7.0 ",
    " Error: too many connections from your address\r\n",
);
