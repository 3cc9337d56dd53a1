//! SMTP command-line parsing (RFC 5321 4.1), borrowed from the receive buffer.
//!
//! A command line (CRLF already removed) becomes a `Command` whose strings point into the line,
//! or a `Bad` naming the reply it deserves. Paths follow RFC 5321 4.1.2 (dot-strings, quoted
//! local parts, address literals, source routes that are accepted and ignored) with RFC 6531's
//! UTF-8 extension when the transaction is SMTPUTF8: a UTF-8 address carries no control,
//! line-separator or bidirectional-control character, and its non-ASCII domain labels must be
//! valid IDNA2008 U-labels (checked with the `idna` crate, SPEC §4.1).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::idna2008;

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
    /// A MAIL or RCPT parameter we do not support (or any parameter after plain HELO):
    /// `555 5.5.4`.
    Parameter,
    /// A BDAT line whose chunk size cannot be read: `501 5.5.4` and close, since the chunk's
    /// length is unknown and nothing after it may be read as a command.
    Chunk,
}

const USAGE_HELO: &str = "Syntax: HELO hostname";
const USAGE_EHLO: &str = "Syntax: EHLO hostname";
const USAGE_MAIL: &str = "Syntax: MAIL FROM:<address>";
const USAGE_RCPT: &str = "Syntax: RCPT TO:<address>";
const USAGE_BDAT: &str = "Syntax: BDAT size [LAST]";
const USAGE_VRFY: &str = "Syntax: VRFY address";
const USAGE_BARE: &str = "Syntax: this command takes no argument";
const USAGE_SIZE: &str = "Syntax: SIZE=number";

/// Most digits in a `SIZE=` value (RFC 1870 `size-value = 1*20DIGIT`).
const SIZE_DIGITS_MAX: usize = 20;

/// The verbs of another protocol (HTTP) talking to the SMTP port (as Postfix's
/// `smtpd_forbidden_commands`): such a client gets `421 4.7.0` and is closed at once.
const FOREIGN_VERBS: [&[u8]; 6] = [b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS"];

/// True when `line` (a whole command line, or the start of one too long to keep) begins with
/// the verb of another protocol: `GET`, `POST`, `HEAD`, `PUT`, `CONNECT` or `OPTIONS`, in any
/// case, followed by a blank or nothing.
pub fn is_foreign(line: &[u8]) -> bool {
    // Each foreign verb starts with one of these letters, and MAIL, RCPT and DATA with none.
    if !matches!(
        line.first().map(u8::to_ascii_uppercase),
        Some(b'G' | b'P' | b'H' | b'C' | b'O')
    ) {
        return false;
    }
    let verb_end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let verb = &line[..verb_end];
    FOREIGN_VERBS.iter().any(|v| verb.eq_ignore_ascii_case(v))
}

/// True when `line` (or the start of a line too long to keep) has the verb `BDAT`, followed by
/// nothing, a space or any other byte that is not part of a longer word (`BDAT\t5` is a BDAT
/// whose size cannot be read, not an unknown command: its client will send a chunk).
pub fn is_bdat(line: &[u8]) -> bool {
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"BDAT")
        && line.get(4).is_none_or(|b| !b.is_ascii_alphanumeric())
}

/// Parses one command line (without its line ending). With `extensions` off (the client said
/// plain HELO, so no ESMTP extension exists), any MAIL or RCPT parameter is `Bad::Parameter`.
pub fn parse(line: &[u8], extensions: bool) -> Result<Command<'_>, Bad> {
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = &line[..verb_end];
    let args = &line[(verb_end + 1).min(line.len())..];
    if verb.eq_ignore_ascii_case(b"STARTTLS") {
        return no_args(args, Command::StartTls);
    }
    if verb.len() != 4 && is_bdat(line) {
        // `BDAT` glued to something other than a space: a chunk may follow, length unknown.
        return Err(Bad::Chunk);
    }
    let Ok(verb) = <[u8; 4]>::try_from(verb) else {
        return Err(Bad::Unknown);
    };
    // Every verb here is four letters: compared as one word, case folded.
    match fold_letters(verb) {
        HELO => Ok(Command::Helo(
            hello_name(args).ok_or(Bad::Syntax(USAGE_HELO))?,
        )),
        EHLO => Ok(Command::Ehlo(
            hello_name(args).ok_or(Bad::Syntax(USAGE_EHLO))?,
        )),
        MAIL => parse_mail(args, extensions),
        RCPT => parse_rcpt(args),
        DATA => no_args(args, Command::Data),
        BDAT => parse_bdat(args),
        RSET => no_args(args, Command::Rset),
        NOOP => Ok(Command::Noop),
        QUIT => no_args(args, Command::Quit),
        VRFY if trim(args).is_empty() => Err(Bad::Syntax(USAGE_VRFY)),
        VRFY => Ok(Command::Vrfy),
        HELP => Ok(Command::Help),
        _ => Err(Bad::Unknown),
    }
}

/// Four bytes as one word with bit 5 of each set: for a letter that is its lower case, and two
/// bytes give the same word at a position only if they are the same letter in either case (or
/// the same byte), so a word of lower-case letters is matched exactly, case folded.
const fn fold_letters(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes) | 0x2020_2020
}

const HELO: u32 = fold_letters(*b"helo");
const EHLO: u32 = fold_letters(*b"ehlo");
const MAIL: u32 = fold_letters(*b"mail");
const RCPT: u32 = fold_letters(*b"rcpt");
const DATA: u32 = fold_letters(*b"data");
const BDAT: u32 = fold_letters(*b"bdat");
const RSET: u32 = fold_letters(*b"rset");
const NOOP: u32 = fold_letters(*b"noop");
const QUIT: u32 = fold_letters(*b"quit");
const VRFY: u32 = fold_letters(*b"vrfy");
const HELP: u32 = fold_letters(*b"help");

/// Accepts a command that takes no argument (trailing blanks are tolerated).
fn no_args(args: &[u8], command: Command<'static>) -> Result<Command<'static>, Bad> {
    if trim(args).is_empty() {
        Ok(command)
    } else {
        Err(Bad::Syntax(USAGE_BARE))
    }
}

/// Strips spaces and tabs at the start.
fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Strips spaces and tabs at both ends.
fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = trim_start(bytes);
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |p| p + 1);
    &bytes[..end]
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
    text(name)
}

/// `bytes` as text, if they are UTF-8. ASCII, the common case, is checked a word at a time
/// (`from_utf8` walks a short string byte by byte).
fn text(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

/// Strips a case-insensitive keyword such as `from:` (given in lower case) and the blanks
/// around it.
fn keyword<'a>(args: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let args = trim_start(args);
    let head = args.get(..word.len())?;
    // A letter of `word` matches either case (bit 5 set on the input's byte folds a capital to
    // it, and only that capital); any other byte matches only itself.
    let same = head
        .iter()
        .zip(word)
        .all(|(&a, &w)| a | (u8::from(w.is_ascii_lowercase()) << 5) == w);
    same.then(|| trim(&args[word.len()..]))
}

/// Parses `MAIL FROM:<path> [params]`; without `extensions`, any parameter is refused.
fn parse_mail(args: &[u8], extensions: bool) -> Result<Command<'_>, Bad> {
    let rest = keyword(args, b"from:").ok_or(Bad::Syntax(USAGE_MAIL))?;
    let rest = text(rest).ok_or(Bad::Sender)?;
    let (inner, params, checked) = match plain_path(rest) {
        Some((mailbox, params)) => (mailbox, params, true),
        None => {
            let (inner, params) = split_path(rest).ok_or(Bad::Sender)?;
            (inner, params, false)
        }
    };
    if !extensions && !params.trim_matches(' ').is_empty() {
        return Err(Bad::Parameter);
    }
    let params = parse_mail_params(params)?;
    let from = if checked || inner.is_empty() {
        inner
    } else {
        mailbox(strip_route(inner).ok_or(Bad::Sender)?, params.smtputf8).ok_or(Bad::Sender)?
    };
    Ok(Command::Mail { from, params })
}

/// Parses `RCPT TO:<path>`; no RCPT parameter is supported.
fn parse_rcpt(args: &[u8]) -> Result<Command<'_>, Bad> {
    let rest = keyword(args, b"to:").ok_or(Bad::Syntax(USAGE_RCPT))?;
    let rest = text(rest).ok_or(Bad::Recipient)?;
    if let Some((to, params)) = plain_path(rest) {
        if !params.trim_matches(' ').is_empty() {
            return Err(Bad::Parameter);
        }
        return Ok(Command::Rcpt { to });
    }
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

/// The usage text of the reply to an unreadable BDAT line (`Bad::Chunk`).
pub const BDAT_USAGE: &str = USAGE_BDAT;

/// Parses `BDAT size [LAST]` (RFC 3030: `chunk-size = 1*DIGIT`, so leading zeros are valid).
/// Anything else — a size that is not digits or does not fit 64 bits, another word — is
/// `Bad::Chunk`: the chunk's length is unknown.
fn parse_bdat(args: &[u8]) -> Result<Command<'static>, Bad> {
    let args = trim(args);
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(Bad::Chunk)?;
    let size = decimal(size).ok_or(Bad::Chunk)?.ok_or(Bad::Chunk)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(Bad::Chunk),
    };
    if words.next().is_some() {
        return Err(Bad::Chunk);
    }
    Ok(Command::Bdat { size, last })
}

/// Reads a non-empty run of ASCII digits (any number of leading zeros): `None` if it is not
/// one, `Some(None)` if its value does not fit 64 bits.
fn decimal(digits: &[u8]) -> Option<Option<u64>> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    }))
}

/// The common path, `<local@domain>` with a Dot-string local part and an ASCII domain name,
/// split and checked in one pass over the byte-class table: the mailbox and the parameters, as
/// `split_path` then `mailbox` would give them. `None` for every other path (`<>`, a quoted
/// local part, a source route, an address literal, non-ASCII, no `@`) and for an invalid
/// one: the general parse decides those.
fn plain_path(rest: &str) -> Option<(&str, &str)> {
    let bytes = rest.as_bytes();
    if bytes.first() != Some(&b'<') {
        return None;
    }
    let class = &ADDRESS_CLASS[0];
    let len = bytes.len();
    // The local part: atoms of atext joined by single dots, up to the `@`.
    let mut i = 1;
    loop {
        let atom = i;
        while i < len && class[usize::from(bytes[i])] & ATEXT != 0 {
            i += 1;
        }
        if i == atom {
            return None;
        }
        match *bytes.get(i)? {
            b'.' => i += 1,
            b'@' => break,
            _ => return None,
        }
    }
    if i - 1 > LOCAL_PART_MAX {
        return None;
    }
    // The domain: labels of 1 to 63 letters, digits and hyphens, each beginning and ending
    // with a letter or digit, up to the `>`.
    i += 1;
    let domain = i;
    loop {
        let label = i;
        while i < len && class[usize::from(bytes[i])] & (LETTER_DIGIT | HYPHEN_CLASS) != 0 {
            i += 1;
        }
        if i == label || i - label > 63 || bytes[label] == b'-' || bytes[i - 1] == b'-' {
            return None;
        }
        match *bytes.get(i)? {
            b'.' => i += 1,
            b'>' => break,
            _ => return None,
        }
    }
    if i - domain > DOMAIN_MAX || i + 1 > PATH_MAX {
        return None;
    }
    let params = &rest[i + 1..];
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    Some((&rest[1..i], params))
}

/// Splits `<...> params` into the text inside the brackets and the rest. Quoted strings may
/// hold `>`. The whole path, brackets included, must fit `PATH_MAX`.
fn split_path(rest: &str) -> Option<(&str, &str)> {
    let bytes = rest.as_bytes();
    if bytes.first() != Some(&b'<') {
        return None;
    }
    // A `>` before any quote ends the path: no quoted string can hide it.
    let mut i = match memchr::memchr2(b'>', b'"', &bytes[1..]) {
        Some(at) if bytes[1 + at] == b'>' => 1 + at,
        Some(_) => 1,
        None => return None,
    };
    let mut quoted = false;
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
    if !text.is_ascii() && (!utf8 || text.chars().any(forbidden_in_utf8_address)) {
        return None;
    }
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
        dot_string_end(bytes, utf8)?
    };
    (end <= LOCAL_PART_MAX).then_some(end)
}

/// The end of the RFC 5321 Dot-string (atoms of one or more atext characters joined by single
/// dots) that `bytes` starts with: the offset of the first `@`, or the length when there is
/// none. `None` when that part is not a Dot-string. One pass over a byte-class table.
fn dot_string_end(bytes: &[u8], utf8: bool) -> Option<usize> {
    let class = &ADDRESS_CLASS[usize::from(utf8)];
    // True at the start and after a dot: an atom must begin here.
    let mut atom_due = true;
    let mut end = bytes.len();
    for (i, &b) in bytes.iter().enumerate() {
        let c = class[usize::from(b)];
        if c & ATEXT != 0 {
            atom_due = false;
        } else if c == DOT && !atom_due {
            atom_due = true;
        } else if c == AT {
            end = i;
            break;
        } else {
            return None;
        }
    }
    (!atom_due).then_some(end)
}

/// Byte classes for local parts and domains: a bit set per byte, one table for ASCII-only
/// addresses and one for SMTPUTF8 ones (where a non-ASCII byte is atext and a domain letter).
static ADDRESS_CLASS: [[u8; 256]; 2] = [address_classes(false), address_classes(true)];
/// RFC 5322 atext.
const ATEXT: u8 = 1;
/// A letter or digit of a domain label.
const LETTER_DIGIT: u8 = 2;
/// `-`: atext, and inside a domain label.
const HYPHEN_CLASS: u8 = 4;
/// `.` (only this bit).
const DOT: u8 = 8;
/// `@` (only this bit).
const AT: u8 = 16;

const fn address_classes(utf8: bool) -> [u8; 256] {
    let mut class = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || (c >= 0x80 && utf8) {
            class[b] = ATEXT | LETTER_DIGIT;
        } else if matches!(c, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'/' | b'=' | b'?' | b'^'..=b'`' | b'{'..=b'~')
        {
            class[b] = ATEXT;
        }
        b += 1;
    }
    class[b'-' as usize] = ATEXT | HYPHEN_CLASS;
    class[b'.' as usize] = DOT;
    class[b'@' as usize] = AT;
    class
}

/// Characters refused anywhere in an SMTPUTF8 address (SPEC §4.1): C0 and C1 controls and
/// DEL (NEL among them), the line and paragraph separators U+2028/U+2029, and the
/// bidirectional controls (U+200E, U+200F, U+202A-U+202E, U+2066-U+2069), which can make an
/// address display as another one.
fn forbidden_in_utf8_address(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// RFC 5321 Domain: dot-separated labels of letters, digits and inner hyphens (U-labels too
/// when `utf8`, see `u_labels_valid`).
fn domain(text: &str, utf8: bool) -> bool {
    if text.is_empty() || text.len() > DOMAIN_MAX {
        return false;
    }
    let labels_ok = text.is_ascii() || (utf8 && u_labels_valid(text));
    if !labels_ok {
        return false;
    }
    // One pass over the labels: each is 1 to 63 letters, digits or hyphens, and begins and
    // ends with a letter or digit (a non-ASCII byte counts as a letter in a U-label).
    let class = &ADDRESS_CLASS[usize::from(utf8)];
    let bytes = text.as_bytes();
    let mut label_start = 0;
    // The class of the byte before; a label's start behaves as after a dot.
    let mut before = DOT;
    for (i, &b) in bytes.iter().enumerate() {
        let c = class[usize::from(b)];
        if c & LETTER_DIGIT != 0 {
            before = LETTER_DIGIT;
            continue;
        }
        if c & HYPHEN_CLASS != 0 && before != DOT {
            before = HYPHEN_CLASS;
        } else if c == DOT && before == LETTER_DIGIT {
            if i - label_start > 63 {
                return false;
            }
            label_start = i + 1;
            before = DOT;
        } else {
            return false;
        }
    }
    before == LETTER_DIGIT && bytes.len() - label_start <= 63
}

/// True when every non-ASCII label of `domain` is a valid IDNA2008 U-label (RFC 5890,
/// RFC 5891 5.4): UTS 46 processing (non-transitional, STD3 rules, the bidi and joiner rules)
/// finds no error and maps the label to itself (up to ASCII case), so the label is already NFC
/// and lower case and holds no character that processing would map away or change (U+00AD,
/// U+3002, non-ASCII capitals, fullwidth forms); its A-label fits the DNS length limits; and it has no `--` in the third and
/// fourth positions; and IDNA2008's own code-point rules hold (`idna2008`: no symbols or
/// punctuation, CONTEXTO rules). Only called for non-ASCII domains, so ASCII mail never pays for it.
fn u_labels_valid(domain: &str) -> bool {
    use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
    let uts46 = Uts46::new();
    let (mapped, checked) = uts46.to_unicode(
        domain.as_bytes(),
        AsciiDenyList::STD3,
        Hyphens::CheckFirstLast,
    );
    if checked.is_err() {
        return false;
    }
    let mut theirs = domain.split('.');
    let mut ours = mapped.split('.');
    loop {
        match (theirs.next(), ours.next()) {
            (None, None) => break,
            (Some(label), Some(mapped)) => {
                if label.is_ascii() {
                    continue;
                }
                let dashes = label.chars().skip(2).take(2).eq("--".chars());
                // ASCII letters compare without case: DNS never distinguishes them.
                if !label.eq_ignore_ascii_case(mapped) || dashes || !idna2008::label_valid(label) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    uts46
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .is_ok()
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
            // RFC 1870: size-value = 1*20DIGIT. A value too large for 64 bits is still a
            // size, just over any limit: it saturates, and the session answers 552.
            let v = value.ok_or(Bad::Syntax(USAGE_MAIL))?;
            if v.len() > SIZE_DIGITS_MAX {
                return Err(Bad::Syntax(USAGE_SIZE));
            }
            let size = decimal(v.as_bytes()).ok_or(Bad::Syntax(USAGE_SIZE))?;
            out.size = Some(size.unwrap_or(u64::MAX));
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

    /// Parses as after EHLO (extensions on).
    fn parse(line: &[u8]) -> Result<Command<'_>, Bad> {
        super::parse(line, true)
    }

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
        assert_eq!(parse(b"BDATX 5"), Err(Bad::Unknown));
        assert_eq!(parse(b"BDAT5"), Err(Bad::Unknown));
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
        // Leading zeros are valid (RFC 3030 chunk-size = 1*DIGIT), however many.
        assert_eq!(
            parse(b"BDAT 00000000000000000005 LAST"),
            Ok(Command::Bdat {
                size: 5,
                last: true
            })
        );
        assert_eq!(
            parse(format!("BDAT {}7", "0".repeat(400)).as_bytes()),
            Ok(Command::Bdat {
                size: 7,
                last: false
            })
        );
        assert_eq!(
            parse(b"BDAT 18446744073709551615"),
            Ok(Command::Bdat {
                size: u64::MAX,
                last: false
            })
        );
        // Anything that does not give a chunk length is unreadable.
        for line in [
            &b"BDAT"[..],
            b"BDAT ",
            b"BDAT -1",
            b"BDAT +1",
            b"BDAT 0x10",
            b"BDAT 1e3",
            b"BDAT 18446744073709551616",
            b"BDAT 99999999999999999999",
            b"BDAT 1 LAST X",
            b"BDAT 1 FIRST",
            b"BDAT LAST",
            b"BDAT\t5",
            b"BDAT\t5 LAST",
            b"BDAT:5",
            b"bdat,5",
        ] {
            assert_eq!(parse(line), Err(Bad::Chunk), "{line:?}");
        }
    }

    #[test]
    fn size_parameter_takes_up_to_20_digits_and_saturates() {
        let size = |l: &[u8]| match parse(l) {
            Ok(Command::Mail { params, .. }) => Ok(params.size),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            size(b"MAIL FROM:<a@b.example> SIZE=0001000"),
            Ok(Some(1000))
        );
        let twenty = b"MAIL FROM:<a@b.example> SIZE=00000000000000000005";
        assert_eq!(size(twenty), Ok(Some(5)));
        // 20 digits over 64 bits: a size, over every limit.
        assert_eq!(
            size(b"MAIL FROM:<a@b.example> SIZE=99999999999999999999"),
            Ok(Some(u64::MAX))
        );
        assert_eq!(
            size(b"MAIL FROM:<a@b.example> SIZE=18446744073709551616"),
            Ok(Some(u64::MAX))
        );
        for line in [
            &b"MAIL FROM:<a@b.example> SIZE=000000000000000000005"[..],
            b"MAIL FROM:<a@b.example> SIZE=",
            b"MAIL FROM:<a@b.example> SIZE=-1",
        ] {
            assert_eq!(size(line), Err(Bad::Syntax(USAGE_SIZE)), "{line:?}");
        }
    }

    #[test]
    fn without_extensions_any_mail_parameter_is_refused() {
        assert_eq!(
            super::parse(b"MAIL FROM:<a@b.example> SIZE=10", false),
            Err(Bad::Parameter)
        );
        assert_eq!(
            super::parse(b"MAIL FROM:<a@b.example> SMTPUTF8", false),
            Err(Bad::Parameter)
        );
        assert_eq!(
            super::parse(b"MAIL FROM:<a@b.example>  ", false),
            Ok(Command::Mail {
                from: "a@b.example",
                params: MailParams::default()
            })
        );
        assert_eq!(
            super::parse(b"RCPT TO:<c@d.example> X=1", false),
            Err(Bad::Parameter)
        );
    }

    #[test]
    fn foreign_protocol_verbs() {
        for line in [
            &b"GET / HTTP/1.1"[..],
            b"POST /x HTTP/1.0",
            b"head /",
            b"PUT",
            b"CONNECT mx.example:25 HTTP/1.1",
            b"Options * HTTP/1.1",
            b"GET\t/",
        ] {
            assert!(is_foreign(line), "{line:?}");
        }
        for line in [
            &b"GETS"[..],
            b"POSTMASTER",
            b"HELO get",
            b"",
            b" GET /",
            b"NOOP GET",
        ] {
            assert!(!is_foreign(line), "{line:?}");
        }
    }

    #[test]
    fn utf8_addresses_refuse_controls_separators_and_bidi() {
        let good = "j\u{f6}rg@b\u{fc}cher.example";
        assert_eq!(mailbox(good, true), Some(good));
        for bad in [
            "a\u{85}b@x.example",        // NEL (C1)
            "a\u{9f}@x.example",         // C1
            "a\u{7f}b\u{e9}@x.example",  // DEL
            "a\u{2028}\u{e9}@x.example", // line separator
            "\u{e9}\u{2029}@x.example",  // paragraph separator
            "\u{e9}@x\u{200e}.example",  // LRM
            "\u{e9}\u{200f}@x.example",  // RLM
            "\u{202e}\u{e9}@x.example",  // RLO
            "\u{e9}\u{202a}@x.example",  // LRE
            "\u{2066}\u{e9}@x.example",  // LRI
            "\u{e9}\u{2069}@x.example",  // PDI
            "\"a\u{85}\"@x.example",     // inside quotes too
        ] {
            assert_eq!(mailbox(bad, true), None, "{bad:?}");
        }
        // Without SMTPUTF8 no non-ASCII at all.
        assert_eq!(mailbox(good, false), None);
    }

    #[test]
    fn utf8_domains_must_be_idna2008_u_labels() {
        for good in [
            "u@b\u{fc}cher.example",
            "u@\u{4f8b}\u{3048}.example",
            "u@\u{4f8b}\u{3048}.\u{30c6}\u{30b9}\u{30c8}",
            "u@fa\u{df}.example", // sharp s is PVALID (non-transitional)
            "u@xn--bcher-kva.b\u{fc}cher.example",
            "u@B\u{fc}cher.Example", // ASCII capitals are only case
            "\u{e9}@d.example",      // ASCII domain, UTF-8 local part
        ] {
            assert_eq!(mailbox(good, true), Some(good), "{good:?}");
        }
        for bad in [
            "u@\u{4f8b}\u{3048}\u{3002}example", // ideographic full stop (mapped to a dot)
            "u@b\u{fc}\u{ad}cher.example",       // soft hyphen (mapped away)
            "u@B\u{dc}CHER.example",             // capital U-umlaut (mapped to lower case)
            "u@bu\u{308}cher.example",           // not NFC
            "u@\u{2665}.example",                // a symbol: DISALLOWED
            "u@\u{ff21}.example",                // fullwidth A (mapped)
            "u@a\u{200d}b\u{e9}.example",        // ZWJ out of context
            "u@\u{5d0}a.example",                // bidi rule: RTL label with LTR letter
            "u@\u{e9}-.example",                 // trailing hyphen
            "u@\u{e9}\u{e9}--x.example",         // -- in 3rd and 4th position
            "u@\u{300}a.example",                // starts with a combining mark
            "u@b\u{fc}cher..example",            // empty label
        ] {
            assert_eq!(mailbox(bad, true), None, "{bad:?}");
        }
        let long_label = format!("u@{}.example", "\u{e9}".repeat(60));
        assert_eq!(mailbox(&long_label, true), None, "A-label over 63 octets");
    }

    /// A label may hold 63 octets, not 64: first, inside and last, and a local part 64.
    #[test]
    fn label_and_local_part_lengths_at_their_limits() {
        let (ok, long) = ("a".repeat(63), "a".repeat(64));
        for utf8 in [false, true] {
            for (at_limit, over) in [
                (format!("{ok}.example"), format!("{long}.example")),
                (format!("x.{ok}.example"), format!("x.{long}.example")),
                (format!("x.{ok}"), format!("x.{long}")),
                (ok.clone(), long.clone()),
            ] {
                assert!(domain(&at_limit, utf8), "{at_limit}");
                assert!(!domain(&over, utf8), "{over}");
            }
            assert_eq!(local_part_end(&format!("{long}@x"), utf8), Some(64));
            assert_eq!(local_part_end(&format!("{long}a@x"), utf8), None);
        }
    }

    #[test]
    fn domains_of_mailboxes() {
        assert_eq!(domain_of("u@x.example"), "x.example");
        assert_eq!(domain_of("\"a@b\"@x.example"), "x.example");
        assert_eq!(domain_of("Postmaster"), "");
    }

    /// Oracles: the path, local-part and domain checks written plainly, one rule at a time.
    mod naive {
        use super::super::{
            hello_name, no_args, parse_bdat, parse_mail, parse_rcpt, trim, u_labels_valid, Bad,
            Command, DOMAIN_MAX, LOCAL_PART_MAX, PATH_MAX, USAGE_EHLO, USAGE_HELO, USAGE_VRFY,
        };

        /// The verb dispatch of `parse`, by upper-casing a copy of the verb.
        pub fn parse(line: &[u8], extensions: bool) -> Result<Command<'_>, Bad> {
            let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
            let verb = &line[..verb_end];
            let args = &line[(verb_end + 1).min(line.len())..];
            if verb.eq_ignore_ascii_case(b"STARTTLS") {
                return no_args(args, Command::StartTls);
            }
            if verb.len() != 4 && super::super::is_bdat(line) {
                return Err(Bad::Chunk);
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
                b"MAIL" => parse_mail(args, extensions),
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

        /// `keyword` by trimming both ends and comparing ignoring ASCII case.
        pub fn keyword<'a>(args: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
            let args = trim(args);
            if args.len() < word.len() || !args[..word.len()].eq_ignore_ascii_case(word) {
                return None;
            }
            Some(trim(&args[word.len()..]))
        }

        pub fn split_path(rest: &str) -> Option<(&str, &str)> {
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

        fn is_atom(atom: &str, utf8: bool) -> bool {
            !atom.is_empty()
                && atom.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
                        || (b >= 0x80 && utf8)
                })
        }

        /// The dot-atom form only (the quoted form has one implementation).
        pub fn dot_local_part_end(text: &str, utf8: bool) -> Option<usize> {
            let end = text.find('@').unwrap_or(text.len());
            let local = &text[..end];
            if local.is_empty() || local.split('.').any(|atom| !is_atom(atom, utf8)) {
                return None;
            }
            (end <= LOCAL_PART_MAX).then_some(end)
        }

        pub fn domain(text: &str, utf8: bool) -> bool {
            if text.is_empty() || text.len() > DOMAIN_MAX {
                return false;
            }
            if !(text.is_ascii() || (utf8 && u_labels_valid(text))) {
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
    }

    /// Text made of the bytes that matter to paths, local parts and domains.
    fn address_text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(
            "[a-cA-C0-9.@<>\"\\\\ _!=#~-]{0,12}(\u{e9}|x{60,70}|[.-]){0,2}[a-c0-9.@<>\"-]{0,12}",
        )
        .expect("regex")
    }

    /// Command lines made of verbs in any case, near misses of them, and the bytes around
    /// them that matter (blanks, `:`, bytes one bit away from a letter).
    fn command_line() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let verb = prop_oneof![
            proptest::sample::select(vec![
                "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY",
                "HELP", "STARTTLS", "GET", "MAI", "MAILS",
            ])
            .prop_flat_map(|v| {
                proptest::collection::vec(any::<bool>(), v.len()).prop_map(move |upper| {
                    v.bytes()
                        .zip(upper)
                        .map(|(b, u)| if u { b } else { b.to_ascii_lowercase() })
                        .collect::<Vec<u8>>()
                })
            }),
            proptest::collection::vec(
                proptest::sample::select(vec![
                    b'M', b'm', b'A', b'I', b'L', 0x0d, 0x09, 0x0c, b'@', b'`', 0xcd
                ]),
                0..6,
            ),
        ];
        let rest = proptest::collection::vec(
            proptest::sample::select(vec![
                b' ', b'\t', b':', 0x1a, b'F', b'r', b'o', b'M', b'T', b'O', b't', 0x14, 0x4f,
                b'<', b'>', b'a', b'@', b'x', b'.', b'0', b'=', 0xc3, 0xa9,
            ]),
            0..24,
        );
        (verb, rest).prop_map(|(mut v, r)| {
            v.extend(r);
            v
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        #[test]
        fn verbs_and_keywords_agree_with_the_oracles(line in command_line(), extensions: bool) {
            proptest::prop_assert_eq!(
                super::parse(&line, extensions),
                naive::parse(&line, extensions)
            );
            for word in [&b"from:"[..], b"to:"] {
                let args = line.get(4..).unwrap_or_default();
                proptest::prop_assert_eq!(keyword(args, word), naive::keyword(args, word));
                proptest::prop_assert_eq!(keyword(&line, word), naive::keyword(&line, word));
            }
        }
    }

    #[test]
    fn folded_verbs_match_only_their_letters() {
        // Every 4-byte verb-shaped word that folds to a known verb is that verb in some case.
        for verb in [
            HELO, EHLO, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT, VRFY, HELP,
        ] {
            let want = verb.to_le_bytes();
            for (i, &letter) in want.iter().enumerate() {
                for b in 0..=255u8 {
                    let mut word = want;
                    word[i] = b;
                    let same_letter = b.to_ascii_lowercase() == letter;
                    assert_eq!(fold_letters(word) == verb, same_letter, "{word:?}");
                }
            }
        }
        assert_eq!(keyword(b"FrOm:<a@b>", b"from:"), Some(&b"<a@b>"[..]));
        assert_eq!(keyword(b"FROM\x1a<a@b>", b"from:"), None);
        assert_eq!(keyword(b" \t To: <a@b> ", b"to:"), Some(&b"<a@b>"[..]));
    }

    /// The general path: `split_path`, then the route dropped and the mailbox checked.
    fn general_path(rest: &str, utf8: bool) -> Option<(&str, &str)> {
        let (inner, params) = split_path(rest)?;
        if inner.is_empty() {
            return Some((inner, params));
        }
        Some((mailbox(strip_route(inner)?, utf8)?, params))
    }

    /// Paths of the plain shape: atext local parts and letter-digit-hyphen domains, with the
    /// dots, hyphens, lengths and trailing bytes around which the rules turn.
    fn plain_shaped_path() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(
            "<[a-z0-9._=-]{0,6}(x{58,66})?[a-z0-9.+-]{0,3}@[a-z0-9._=+-]{0,6}(y{58,66})?[a-z0-9._-]{0,4}>[ a>]{0,2}",
        )
        .expect("regex")
    }

    #[test]
    fn plain_paths_take_the_one_pass() {
        for (path, mailbox, params) in [
            ("<a@b>", "a@b", ""),
            (
                "<first.last@mail.example.com> SIZE=10",
                "first.last@mail.example.com",
                " SIZE=10",
            ),
            ("<a-b+c@x-y.example>", "a-b+c@x-y.example", ""),
        ] {
            assert_eq!(plain_path(path), Some((mailbox, params)), "{path}");
        }
        for path in [
            "<>",
            "<postmaster>",
            "<\"a b\"@x.example>",
            "<@relay.example:a@x.example>",
            "<a@[192.0.2.1]>",
            "<a@b\u{e9}.example>",
            "<a.@b>",
            "<.a@b>",
            "<a..b@c>",
            "<a@-b>",
            "<a@b->",
            "<a@b.>",
            "<a@b..c>",
            "<a@b-.c>",
            "<a@b_c.example>",
            "<a@b.c_d>",
            "<a@b+c>",
            "<a@b>x",
            "<a@b",
            "<a@b@c>",
        ] {
            assert_eq!(plain_path(path), None, "{path}");
        }
        let label = "l".repeat(63);
        let long = format!("<a@{label}.{label}>");
        assert_eq!(plain_path(&long), Some((&long[1..long.len() - 1], "")));
        assert_eq!(plain_path(&format!("<a@{label}l>")), None);
        assert_eq!(plain_path(&format!("<a@{label}l.b>")), None);
        let local = "l".repeat(LOCAL_PART_MAX);
        assert!(plain_path(&format!("<{local}@b>")).is_some());
        assert_eq!(plain_path(&format!("<{local}l@b>")), None);
        // A path of PATH_MAX bytes, brackets included, fits; one byte more does not.
        let labels = vec!["d".repeat(63); 3].join(".");
        for (extra, fits) in [(60, true), (61, false)] {
            let path = format!("<a@{labels}.{}>", "d".repeat(extra));
            assert_eq!(path.len() <= PATH_MAX, fits);
            assert_eq!(plain_path(&path).is_some(), fits, "{}", path.len());
            assert_eq!(general_path(&path, false).is_some(), fits, "{}", path.len());
        }
    }

    #[test]
    fn the_plain_path_agrees_on_every_short_path() {
        // Every `<` + up to six bytes over the alphabet that matters (+ `>`), both ways.
        const ALPHABET: &[u8] = b"a0-.@_>\" ";
        let mut text = Vec::with_capacity(8);
        let mut checked = 0;
        for len in 0..=6u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                text.clear();
                text.push(b'<');
                for _ in 0..len {
                    text.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                let text = std::str::from_utf8(&text).unwrap();
                for with_end in [text.to_owned(), format!("{text}>")] {
                    let general = general_path(&with_end, false);
                    match plain_path(&with_end) {
                        Some(plain) => {
                            assert_eq!(general, Some(plain), "{with_end}");
                            checked += 1;
                        }
                        // Without quotes, the only plain-shaped paths are `<local@domain>`.
                        None if !with_end.contains('"') => {
                            assert!(general.is_none_or(|(m, _)| !m.contains('@')), "{with_end}")
                        }
                        None => {}
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn the_plain_path_agrees_after_any_one_byte_edit() {
        // Every byte value put in place of, inserted before, or removed at every position of
        // paths near the limits: whatever the one pass accepts, the general parse accepts alike.
        let label = "d".repeat(63);
        let longest = format!("<a@{label}.{label}.{label}.{}>", "d".repeat(60));
        assert_eq!(longest.len(), PATH_MAX);
        let local = format!("<{}@b.example>", "l".repeat(LOCAL_PART_MAX));
        let long_label = format!("<a@b.{label}.c>");
        let bases = [
            "<ab@c.de>",
            "<first.last@mail.example.com> SIZE=10",
            "<x-y+z=w@a-b.c9>",
            "<Postmaster@b>",
            &longest,
            &local,
            &long_label,
        ];
        let mut accepted = 0;
        for base in bases {
            let base = base.as_bytes();
            for at in 0..=base.len() {
                for byte in 0..=255u8 {
                    let mut edits = vec![[&base[..at], &[byte], &base[at..]].concat()];
                    if at < base.len() {
                        edits.push([&base[..at], &[byte], &base[at + 1..]].concat());
                        edits.push([&base[..at], &base[at + 1..]].concat());
                    }
                    for edit in &edits {
                        let Ok(text) = std::str::from_utf8(edit) else {
                            continue;
                        };
                        if let Some(plain) = plain_path(text) {
                            accepted += 1;
                            for utf8 in [false, true] {
                                assert_eq!(general_path(text, utf8), Some(plain), "{text:?}");
                            }
                        }
                    }
                }
            }
        }
        assert!(accepted > 10_000, "{accepted}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        #[test]
        fn the_plain_path_agrees_with_the_general_one(text in address_text(), utf8: bool) {
            // Whatever the one pass accepts, the general parse accepts the same way.
            if let Some(plain) = plain_path(&text) {
                proptest::prop_assert_eq!(general_path(&text, utf8), Some(plain));
            }
        }

        #[test]
        fn plain_shaped_paths_all_take_the_one_pass(text in plain_shaped_path(), utf8: bool) {
            // For paths of the plain shape the one pass decides exactly as the general parse.
            proptest::prop_assert_eq!(plain_path(&text), general_path(&text, utf8));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        #[test]
        fn fast_checks_agree_with_the_oracles(text in address_text(), utf8: bool) {
            proptest::prop_assert_eq!(split_path(&text), naive::split_path(&text));
            proptest::prop_assert_eq!(domain(&text, utf8), naive::domain(&text, utf8));
            if !text.starts_with('"') {
                proptest::prop_assert_eq!(
                    local_part_end(&text, utf8),
                    naive::dot_local_part_end(&text, utf8)
                );
            }
        }
    }
}
