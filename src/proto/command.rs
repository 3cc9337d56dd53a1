//! SMTP command-line parsing (RFC 5321 4.1), borrowed from the receive buffer.
//!
//! A command line (CRLF already removed) becomes a `Command` whose strings point into the line,
//! or a `Bad` naming the reply it deserves. Paths follow RFC 5321 4.1.2 (dot-strings, quoted
//! local parts, address literals, source routes that are accepted and ignored) with RFC 6531's
//! UTF-8 extension when the transaction is SMTPUTF8.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest reverse-path or forward-path, brackets included (RFC 5321 4.5.3.1.3).
pub const PATH_MAX: usize = 256;
/// Longest local part (RFC 5321 4.5.3.1.1).
pub const LOCAL_PART_MAX: usize = 64;
/// Longest domain (RFC 5321 4.5.3.1.2).
pub const DOMAIN_MAX: usize = 255;

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Helo(&'a str),
    Ehlo(&'a str),
    /// MAIL FROM: the mailbox ("" for the null sender) and its parameters.
    Mail {
        from: &'a str,
        params: MailParams,
    },
    /// RCPT TO: the mailbox exactly as written (without brackets or source route).
    Rcpt {
        to: &'a str,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    /// STARTTLS (RFC 3207).
    StartTls,
}

/// MAIL parameters we understand (RFC 1870, RFC 6152, RFC 6531).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body_8bit: bool,
    pub smtputf8: bool,
}

/// Why a command line was refused; each maps to one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// Not a command we know: `500 5.5.1`.
    Unknown,
    /// Arguments do not parse: `501 5.5.4` with this usage text.
    Syntax(&'static str),
    /// The reverse-path is not an address: `501 5.1.7`.
    Sender,
    /// The forward-path is not an address: `501 5.1.3`.
    Recipient,
    /// A MAIL or RCPT parameter we do not support: `555 5.5.4`.
    Parameter,
}

const USAGE_HELO: &str = "Syntax: HELO hostname";
const USAGE_EHLO: &str = "Syntax: EHLO hostname";
const USAGE_MAIL: &str = "Syntax: MAIL FROM:<address>";
const USAGE_RCPT: &str = "Syntax: RCPT TO:<address>";
const USAGE_BDAT: &str = "Syntax: BDAT size [LAST]";
const USAGE_VRFY: &str = "Syntax: VRFY address";
const USAGE_BARE: &str = "Syntax: this command takes no argument";

/// Parses one command line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Command<'_>, Bad> {
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = &line[..verb_end];
    let args = &line[(verb_end + 1).min(line.len())..];
    if verb.eq_ignore_ascii_case(b"STARTTLS") {
        return no_args(args, Command::StartTls);
    }
    if verb.len() != 4 {
        return Err(Bad::Unknown);
    }
    let mut upper = [0u8; 4];
    upper.copy_from_slice(verb);
    upper.make_ascii_uppercase();
    match &upper {
        b"HELO" => Ok(Command::Helo(
            hello_name(args).ok_or(Bad::Syntax(USAGE_HELO))?,
        )),
        b"EHLO" => Ok(Command::Ehlo(
            hello_name(args).ok_or(Bad::Syntax(USAGE_EHLO))?,
        )),
        b"MAIL" => parse_mail(args),
        b"RCPT" => parse_rcpt(args),
        b"DATA" => no_args(args, Command::Data),
        b"BDAT" => parse_bdat(args),
        b"RSET" => no_args(args, Command::Rset),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_args(args, Command::Quit),
        b"VRFY" if trim(args).is_empty() => Err(Bad::Syntax(USAGE_VRFY)),
        b"VRFY" => Ok(Command::Vrfy),
        b"HELP" => Ok(Command::Help),
        _ => Err(Bad::Unknown),
    }
}

/// Accepts a command that takes no argument (trailing blanks are tolerated).
fn no_args(args: &[u8], command: Command<'static>) -> Result<Command<'static>, Bad> {
    if trim(args).is_empty() {
        Ok(command)
    } else {
        Err(Bad::Syntax(USAGE_BARE))
    }
}

/// Strips spaces and tabs at both ends.
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |p| p + 1);
    &bytes[start..end]
}

/// The HELO/EHLO argument: one printable word (a domain or address literal; clients in the
/// wild send odd names, so only the character set is checked, as Postfix does by default).
fn hello_name(args: &[u8]) -> Option<&str> {
    let name = trim(args);
    let word_end = name.iter().position(|&b| b == b' ').unwrap_or(name.len());
    let name = &name[..word_end];
    if name.is_empty() || !name.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return None;
    }
    std::str::from_utf8(name).ok()
}

/// Strips a case-insensitive keyword such as `FROM:` and the blanks after it.
fn keyword<'a>(args: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let args = trim(args);
    if args.len() < word.len() || !args[..word.len()].eq_ignore_ascii_case(word) {
        return None;
    }
    Some(trim(&args[word.len()..]))
}

/// Parses `MAIL FROM:<path> [params]`.
fn parse_mail(args: &[u8]) -> Result<Command<'_>, Bad> {
    let rest = keyword(args, b"FROM:").ok_or(Bad::Syntax(USAGE_MAIL))?;
    let rest = std::str::from_utf8(rest).map_err(|_| Bad::Sender)?;
    let (inner, params) = split_path(rest).ok_or(Bad::Sender)?;
    let params = parse_mail_params(params)?;
    let from = if inner.is_empty() {
        inner
    } else {
        mailbox(strip_route(inner).ok_or(Bad::Sender)?, params.smtputf8).ok_or(Bad::Sender)?
    };
    Ok(Command::Mail { from, params })
}

/// Parses `RCPT TO:<path>`; no RCPT parameter is supported.
fn parse_rcpt(args: &[u8]) -> Result<Command<'_>, Bad> {
    let rest = keyword(args, b"TO:").ok_or(Bad::Syntax(USAGE_RCPT))?;
    let rest = std::str::from_utf8(rest).map_err(|_| Bad::Recipient)?;
    let (inner, params) = split_path(rest).ok_or(Bad::Recipient)?;
    if !params.trim_matches(' ').is_empty() {
        return Err(Bad::Parameter);
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        // RFC 5321 4.5.1: <Postmaster> without a domain is always accepted.
        return Ok(Command::Rcpt { to: inner });
    }
    let route_free = strip_route(inner).ok_or(Bad::Recipient)?;
    // UTF-8 is checked against the transaction's SMTPUTF8 flag by the session.
    Ok(Command::Rcpt {
        to: mailbox(route_free, true).ok_or(Bad::Recipient)?,
    })
}

/// Parses `BDAT size [LAST]` (RFC 3030).
fn parse_bdat(args: &[u8]) -> Result<Command<'static>, Bad> {
    let args = trim(args);
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(Bad::Syntax(USAGE_BDAT))?;
    if size.is_empty() || size.len() > 19 || !size.iter().all(u8::is_ascii_digit) {
        return Err(Bad::Syntax(USAGE_BDAT));
    }
    let size = size.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(Bad::Syntax(USAGE_BDAT)),
    };
    if words.next().is_some() {
        return Err(Bad::Syntax(USAGE_BDAT));
    }
    Ok(Command::Bdat { size, last })
}

/// Splits `<...> params` into the text inside the brackets and the rest. Quoted strings may
/// hold `>`. The whole path, brackets included, must fit `PATH_MAX`.
fn split_path(rest: &str) -> Option<(&str, &str)> {
    let bytes = rest.as_bytes();
    if bytes.first() != Some(&b'<') {
        return None;
    }
    let mut quoted = false;
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                if i + 1 > PATH_MAX {
                    return None;
                }
                let params = &rest[i + 1..];
                if !params.is_empty() && !params.starts_with(' ') {
                    return None;
                }
                return Some((&rest[1..i], params));
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Drops an RFC 5321 source route (`@a,@b:`), which must be accepted and ignored.
fn strip_route(inner: &str) -> Option<&str> {
    if !inner.starts_with('@') {
        return Some(inner);
    }
    let colon = inner.find(':')?;
    let route = &inner[..colon];
    if route
        .split(',')
        .all(|hop| hop.strip_prefix('@').is_some_and(|d| domain(d, false)))
    {
        Some(&inner[colon + 1..])
    } else {
        None
    }
}

/// Validates `local@domain` and returns it unchanged.
pub fn mailbox(text: &str, utf8: bool) -> Option<&str> {
    let at = local_part_end(text, utf8)?;
    if text.as_bytes().get(at) != Some(&b'@') {
        return None;
    }
    let dom = &text[at + 1..];
    let dom_ok = if dom.starts_with('[') {
        address_literal(dom)
    } else {
        domain(dom, utf8)
    };
    dom_ok.then_some(text)
}

/// The domain of a mailbox already validated by `mailbox` ("" when it has none).
pub fn domain_of(mailbox: &str) -> &str {
    local_part_end(mailbox, true).map_or("", |at| mailbox.get(at + 1..).unwrap_or(""))
}

/// True when the text holds bytes outside ASCII.
pub fn is_non_ascii(text: &str) -> bool {
    !text.is_ascii()
}

/// Returns the offset of the byte after a valid local part.
fn local_part_end(text: &str, utf8: bool) -> Option<usize> {
    let bytes = text.as_bytes();
    let end = if bytes.first() == Some(&b'"') {
        let mut i = 1;
        loop {
            match *bytes.get(i)? {
                b'"' => break i + 1,
                b'\\' => {
                    let next = *bytes.get(i + 1)?;
                    if !(32..=126).contains(&next) {
                        return None;
                    }
                    i += 2;
                }
                b if (32..=126).contains(&b) => i += 1,
                b if b >= 0x80 && utf8 => i += 1,
                _ => return None,
            }
        }
    } else {
        let end = bytes.iter().position(|&b| b == b'@').unwrap_or(bytes.len());
        let local = &text[..end];
        if local.is_empty() || local.split('.').any(|atom| !is_atom(atom, utf8)) {
            return None;
        }
        end
    };
    (end <= LOCAL_PART_MAX).then_some(end)
}

/// RFC 5321 Atom: one or more atext characters.
fn is_atom(atom: &str, utf8: bool) -> bool {
    !atom.is_empty()
        && atom.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || (b >= 0x80 && utf8)
        })
}

/// RFC 5321 Domain: dot-separated labels of letters, digits and inner hyphens (U-labels too
/// when `utf8`).
fn domain(text: &str, utf8: bool) -> bool {
    if text.is_empty() || text.len() > DOMAIN_MAX {
        return false;
    }
    text.split('.').all(|label| {
        let bytes = label.as_bytes();
        let ok_char = |b: u8| b.is_ascii_alphanumeric() || (b >= 0x80 && utf8);
        match (bytes.first(), bytes.last()) {
            (Some(&first), Some(&last)) => {
                ok_char(first)
                    && ok_char(last)
                    && bytes.len() <= 63
                    && bytes.iter().all(|&b| ok_char(b) || b == b'-')
            }
            _ => false,
        }
    })
}

/// RFC 5321 address literal: `[1.2.3.4]`, `[IPv6:...]` or `[tag:text]`.
fn address_literal(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner.get(..5).filter(|p| p.eq_ignore_ascii_case("IPv6:")) {
        return inner[v6.len()..].parse::<Ipv6Addr>().is_ok();
    }
    if inner.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    match inner.split_once(':') {
        Some((tag, content)) => {
            domain(tag, false)
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b))
        }
        None => false,
    }
}

/// Parses MAIL parameters: SIZE=, BODY=7BIT|8BITMIME, SMTPUTF8.
fn parse_mail_params(params: &str) -> Result<MailParams, Bad> {
    let mut out = MailParams::default();
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        if key.eq_ignore_ascii_case("SIZE") {
            let v = value.ok_or(Bad::Syntax(USAGE_MAIL))?;
            if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Bad::Syntax("Syntax: SIZE=number"));
            }
            out.size = v.parse().ok();
        } else if key.eq_ignore_ascii_case("BODY") {
            match value {
                Some(v) if v.eq_ignore_ascii_case("7BIT") => out.body_8bit = false,
                Some(v) if v.eq_ignore_ascii_case("8BITMIME") => out.body_8bit = true,
                _ => return Err(Bad::Syntax("Syntax: BODY=7BIT or BODY=8BITMIME")),
            }
        } else if key.eq_ignore_ascii_case("SMTPUTF8") && value.is_none() {
            out.smtputf8 = true;
        } else {
            return Err(Bad::Parameter);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse(b"noop"), Ok(Command::Noop));
        assert_eq!(parse(b"QuIt"), Ok(Command::Quit));
        assert_eq!(
            parse(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example"))
        );
        assert_eq!(parse(b"XYZZ"), Err(Bad::Unknown));
        assert_eq!(parse(b""), Err(Bad::Unknown));
        assert_eq!(parse(b"StartTLS"), Ok(Command::StartTls));
        assert_eq!(parse(b"STARTTLS "), Ok(Command::StartTls));
        assert_eq!(parse(b"STARTTLS x"), Err(Bad::Syntax(USAGE_BARE)));
        assert_eq!(parse(b"STARTTLSX"), Err(Bad::Unknown));
    }

    #[test]
    fn mail_paths() {
        let mail = |l: &'static [u8]| match parse(l) {
            Ok(Command::Mail { from, params }) => Ok((from, params)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(mail(b"MAIL FROM:<a@b.example>").unwrap().0, "a@b.example");
        assert_eq!(mail(b"mail from: <a@b.example>").unwrap().0, "a@b.example");
        assert_eq!(mail(b"MAIL FROM:<>").unwrap().0, "");
        assert_eq!(
            mail(b"MAIL FROM:<\"john doe\"@x.example>").unwrap().0,
            "\"john doe\"@x.example"
        );
        assert_eq!(
            mail(b"MAIL FROM:<\"a>b\"@x.example>").unwrap().0,
            "\"a>b\"@x.example"
        );
        assert_eq!(
            mail(b"MAIL FROM:<@r1.example,@r2.example:u@x.example>")
                .unwrap()
                .0,
            "u@x.example"
        );
        assert_eq!(
            mail(b"MAIL FROM:<u@[192.0.2.1]>").unwrap().0,
            "u@[192.0.2.1]"
        );
        assert_eq!(
            mail(b"MAIL FROM:<u@[IPv6:2001:db8::1]>").unwrap().0,
            "u@[IPv6:2001:db8::1]"
        );
        assert_eq!(mail(b"MAIL FROM:<a..b@x.example>"), Err(Bad::Sender));
        assert_eq!(mail(b"MAIL FROM:<a@-x.example>"), Err(Bad::Sender));
        assert_eq!(mail(b"MAIL FROM:<a@[300.1.1.1]>"), Err(Bad::Sender));
        assert_eq!(mail(b"MAIL FROM:a@x.example"), Err(Bad::Sender));
        assert_eq!(mail(b"MAIL FROM:<a@x.example"), Err(Bad::Sender));
        assert_eq!(mail(b"MAIL TO:<a@x.example>"), Err(Bad::Syntax(USAGE_MAIL)));
        assert_eq!(
            mail("MAIL FROM:<j\u{f6}rg@x.example>".as_bytes()),
            Err(Bad::Sender)
        );
        let (from, params) =
            mail("MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example> SMTPUTF8".as_bytes()).unwrap();
        assert_eq!(from, "j\u{f6}rg@b\u{fc}cher.example");
        assert!(params.smtputf8);
        let long = format!("MAIL FROM:<{}@x.example>", "a".repeat(65));
        assert_eq!(
            mail(Box::leak(long.into_bytes().into_boxed_slice())),
            Err(Bad::Sender)
        );
    }

    #[test]
    fn mail_parameters() {
        let params = |l: &'static [u8]| match parse(l) {
            Ok(Command::Mail { params, .. }) => Ok(params),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let p = params(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME").unwrap();
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                body_8bit: true,
                smtputf8: false
            }
        );
        assert!(
            !params(b"MAIL FROM:<a@b.example> body=7bit")
                .unwrap()
                .body_8bit
        );
        assert_eq!(
            params(b"MAIL FROM:<a@b.example> SIZE=x"),
            Err(Bad::Syntax("Syntax: SIZE=number"))
        );
        assert_eq!(
            params(b"MAIL FROM:<a@b.example> AUTH=<>"),
            Err(Bad::Parameter)
        );
        assert_eq!(
            params(b"MAIL FROM:<a@b.example> RET=FULL"),
            Err(Bad::Parameter)
        );
    }

    #[test]
    fn rcpt_paths() {
        assert_eq!(
            parse(b"RCPT TO:<u@x.example>"),
            Ok(Command::Rcpt { to: "u@x.example" })
        );
        assert_eq!(
            parse(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt { to: "Postmaster" })
        );
        assert_eq!(parse(b"RCPT TO:<>"), Err(Bad::Recipient));
        assert_eq!(parse(b"RCPT TO:<u>"), Err(Bad::Recipient));
        assert_eq!(
            parse(b"RCPT TO:<u@x.example> NOTIFY=NEVER"),
            Err(Bad::Parameter)
        );
        assert_eq!(
            parse(b"RCPT FROM:<u@x.example>"),
            Err(Bad::Syntax(USAGE_RCPT))
        );
    }

    #[test]
    fn bdat_arguments() {
        assert_eq!(
            parse(b"BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse(b"BDAT 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(parse(b"BDAT"), Err(Bad::Syntax(USAGE_BDAT)));
        assert_eq!(parse(b"BDAT -1"), Err(Bad::Syntax(USAGE_BDAT)));
        assert_eq!(
            parse(b"BDAT 99999999999999999999"),
            Err(Bad::Syntax(USAGE_BDAT))
        );
        assert_eq!(parse(b"BDAT 1 LAST X"), Err(Bad::Syntax(USAGE_BDAT)));
    }

    #[test]
    fn domains_of_mailboxes() {
        assert_eq!(domain_of("u@x.example"), "x.example");
        assert_eq!(domain_of("\"a@b\"@x.example"), "x.example");
        assert_eq!(domain_of("Postmaster"), "");
    }
}
