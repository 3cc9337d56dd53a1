//! Protocol margins against the real binary, on both backends (SPEC §4.1, §4.4).
//!
//! What hostile-client testing found, each checked end to end over loopback with a raw client:
//! a recipient sent between BDAT chunks gets `503` and the stored file names exactly the
//! recipients that got `250`; a BDAT size with leading zeros is read and one that cannot be
//! read gets `501` and the connection is closed, so the chunk is never run as commands; mail
//! commands before HELO/EHLO get `503` (a BDAT's chunk is consumed first); after plain HELO
//! MAIL parameters get `555`; an HTTP request gets `421 4.7.0` and is closed with nothing
//! stored, whatever its body holds; repeated EHLO and empty chunks are junk, recipients 1,000
//! past the limit are errors; SMTPUTF8 addresses with bidi
//! controls or invalid IDNA are refused; the `Received:` header sanitises the HELO name and
//! writes IPv6 clients as `[IPv6:...]`.

mod common;

use common::*;

const BACKENDS: [&str; 2] = ["uring", "epoll"];

/// Runs `check` against a fresh server on each backend (skipping io_uring where refused).
fn on_both_backends(test: &str, vars: &[(&str, &str)], check: impl Fn(&Server)) {
    for backend in BACKENDS {
        if let Some(server) = start_backend(backend, vars, test) {
            check(&server);
        }
    }
}

/// The files in `new/`, asserting there are `n` of them.
fn stored(server: &Server, n: usize) -> Vec<(String, Vec<u8>)> {
    let files = server.new_files();
    assert_eq!(files.len(), n, "files in new/: {:?}", names(&files));
    files
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<&str> {
    files.iter().map(|(n, _)| n.as_str()).collect()
}

/// The template of a stored message from `Client::ehlo` over IPv4.
fn expected<'a>(recipients: &'a [&'a str], body: &'a [u8]) -> Expected<'a> {
    Expected {
        sender: "a@b.example",
        recipients,
        helo: "client.example",
        peer: "127.0.0.1",
        protocol: "ESMTP",
        body,
    }
}

#[test]
fn rcpt_between_bdat_chunks_is_refused_and_the_file_names_every_accepted_recipient() {
    on_both_backends("rcpt_between_bdat_chunks", &[], |server| {
        // One command at a time, as in the report.
        let mut client = Client::ehlo(server.addr());
        client.send(b"MAIL FROM:<a@b.example>\r\n");
        client.expect("250 2.1.0");
        client.send(b"RCPT TO:<first@d.example>\r\n");
        client.expect("250 2.1.5");
        client.send(b"BDAT 6\r\nhello\n");
        client.expect("250 2.0.0 Ok: 6 octets");
        client.send(b"RCPT TO:<second@d.example>\r\n");
        client.expect("503 5.5.1");
        client.send(b"BDAT 6 LAST\r\nworld\n");
        let one = client.expect_queued();
        // The same bytes in one packet: the same answer, the same file.
        client.send(
            b"MAIL FROM:<a@b.example>\r\nRCPT TO:<first@d.example>\r\nBDAT 6\r\nhello\n\
              RCPT TO:<second@d.example>\r\nBDAT 6 LAST\r\nworld\n",
        );
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        client.expect("250 2.0.0 Ok: 6 octets");
        client.expect("503 5.5.1");
        let two = client.expect_queued();
        let files = stored(server, 2);
        let want = expected(&["first@d.example"], b"hello\nworld\n");
        let ids: Vec<String> = files
            .iter()
            .map(|(name, bytes)| check_stored(name, bytes, &want))
            .collect();
        assert_eq!(ids, [one, two]);
    });
}

#[test]
fn bdat_sizes_leading_zeros_read_unreadable_closes() {
    on_both_backends("bdat_sizes", &[], |server| {
        let mut client = Client::ehlo(server.addr());
        client.send(
            b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n\
              BDAT 00000000000000000005 LAST\r\nhelloQUIT\r\n",
        );
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        client.expect_queued();
        client.expect("221 ");
        let files = stored(server, 1);
        check_stored(
            &files[0].0,
            &files[0].1,
            &expected(&["c@d.example"], b"hello"),
        );

        // An unreadable size: 501, closed; the chunk's bytes never run as commands.
        for line in ["BDAT 5x LAST", "BDAT 99999999999999999999", "BDAT 5 FIRST"] {
            let mut client = Client::ehlo(server.addr());
            client.send(
                format!(
                    "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n{line}\r\n\
                     helloMAIL FROM:<x@y.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n"
                )
                .as_bytes(),
            );
            client.expect("250 2.1.0");
            client.expect("250 2.1.5");
            client.expect("501 5.5.4");
            assert_eq!(
                client.read_until_closed(),
                "",
                "{line}: nothing after the 501"
            );
        }
        stored(server, 1);
    });
}

#[test]
fn mail_before_helo_and_extensions_after_helo() {
    on_both_backends("mail_before_helo", &[], |server| {
        let mut client = Client::greeted(server.addr());
        client.send(b"MAIL FROM:<a@b.example>\r\n");
        client.expect("503 5.5.1");
        client.send(b"RCPT TO:<c@d.example>\r\nDATA\r\n");
        client.expect("503 5.5.1");
        client.expect("503 5.5.1");
        // BDAT: its chunk is consumed (the QUIT inside it does not run), then 503.
        client.send(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
        client.expect("503 5.5.1");
        client.expect("250 2.0.0 Ok");

        client.send(b"HELO client.example\r\n");
        client.expect("250 ");
        client.send(b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\n");
        client.expect("555 5.5.4");
        client.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        client.send(b"BDAT 6 LAST\r\nQUIT\r\n");
        client.expect("503 5.5.1");
        client.send(b"DATA\r\n");
        client.expect("354 ");
        client.send(b"plain\r\n.\r\n");
        client.expect_queued();
        let files = stored(server, 1);
        let want = Expected {
            helo: "client.example",
            protocol: "SMTP",
            ..expected(&["c@d.example"], b"plain\r\n")
        };
        check_stored(&files[0].0, &files[0].1, &want);
    });
}

#[test]
fn http_requests_get_421_and_close_with_nothing_stored() {
    on_both_backends("http_requests", &[], |server| {
        let post = b"POST /submit HTTP/1.1\r\nHost: mx\r\nContent-Length: 120\r\n\r\n\
                     EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n\
                     spam\r\n.\r\n";
        for request in [
            &post[..],
            b"GET / HTTP/1.1\r\nHost: mx\r\n\r\n",
            b"CONNECT a:25 HTTP/1.1\r\n",
        ] {
            let mut client = Client::greeted(server.addr());
            client.send(request);
            client.expect("421 4.7.0");
            assert_eq!(client.read_until_closed(), "");
        }
        stored(server, 0);
    });
}

#[test]
fn repeated_ehlo_is_junk() {
    on_both_backends(
        "repeated_ehlo",
        &[("RINGMX_MAX_JUNK_COMMANDS", "3")],
        |server| {
            let mut client = Client::ehlo(server.addr());
            for _ in 0..3 {
                client.send(b"EHLO client.example\r\n");
                client.expect("250");
            }
            client.send(b"EHLO client.example\r\n");
            client.expect("421 4.7.0");
            assert_eq!(client.read_until_closed(), "");
        },
    );
}

#[test]
fn empty_chunks_are_junk_and_recipients_far_past_the_limit_are_errors() {
    let vars = [
        ("RINGMX_MAX_JUNK_COMMANDS", "2"),
        ("RINGMX_MAX_RECIPIENTS", "1"),
        ("RINGMX_MAX_ERRORS", "1"),
    ];
    on_both_backends("junk_and_overshoot", &vars, |server| {
        let mut client = Client::ehlo(server.addr());
        client.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        client.send(b"BDAT 0\r\nBDAT 0\r\nBDAT 00\r\n");
        client.expect("250 2.0.0 Ok: 0 octets");
        client.expect("250 2.0.0 Ok: 0 octets");
        client.expect("421 4.7.0");
        assert_eq!(client.read_until_closed(), "");

        // 1 recipient + 1000 more are answered 452 without counting; the next two are
        // errors: the first is tolerated (RINGMX_MAX_ERRORS=1), the second closes.
        let mut client = Client::ehlo(server.addr());
        let mut burst = b"MAIL FROM:<a@b.example>\r\n".to_vec();
        for _ in 0..1003 {
            burst.extend_from_slice(b"RCPT TO:<c@d.example>\r\n");
        }
        client.send(&burst);
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        for _ in 0..1001 {
            client.expect("452 4.5.3");
        }
        client.expect("421 4.7.0");
        assert_eq!(client.read_until_closed(), "");
    });
}

#[test]
fn smtputf8_addresses_are_checked() {
    on_both_backends("smtputf8_addresses", &[], |server| {
        let mut client = Client::ehlo(server.addr());
        client.send("MAIL FROM:<\u{e9}\u{202e}@b.example> SMTPUTF8\r\n".as_bytes());
        client.expect("501 5.1.7");
        client.send("MAIL FROM:<\u{e9}@b.example> SMTPUTF8\r\n".as_bytes());
        client.expect("250 2.1.0");
        for rcpt in [
            "u\u{85}\u{e9}@d.example",
            "u@\u{4f8b}\u{3048}\u{3002}example",
            "u@b\u{fc}\u{ad}cher.example",
        ] {
            client.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
            client.expect("501 5.1.3");
        }
        client.send("RCPT TO:<\u{f1}and\u{fa}@b\u{fc}cher.example>\r\n".as_bytes());
        client.expect("250 2.1.5");
    });
}

#[test]
fn received_header_sanitises_helo() {
    on_both_backends("received_header", &[], |server| {
        let mut client = Client::greeted(server.addr());
        client.send(b"EHLO x(y;z)<>\"\\\r\n");
        client.expect("250");
        let id = send_lockstep(&mut client, "a@b.example", &["c@d.example"], b"hi\r\n");
        let files = stored(server, 1);
        let want = Expected {
            helo: "x?y?z?????",
            ..expected(&["c@d.example"], b"hi\r\n")
        };
        assert_eq!(check_stored(&files[0].0, &files[0].1, &want), id);
    });
}

#[test]
fn received_header_writes_ipv6_clients_as_ipv6_literals() {
    if !ipv6_loopback_available() {
        eprintln!("SKIP received_header_writes_ipv6_clients: cannot bind [::1] on this machine");
        return;
    }
    on_both_backends("received_ipv6", &[("RINGMX_LISTEN", "[::1]:0")], |server| {
        let mut client = Client::ehlo(server.addr());
        let id = send_lockstep(&mut client, "a@b.example", &["c@d.example"], b"hi\r\n");
        let files = stored(server, 1);
        let want = Expected {
            peer: "IPv6:::1",
            ..expected(&["c@d.example"], b"hi\r\n")
        };
        assert_eq!(check_stored(&files[0].0, &files[0].1, &want), id);
    });
}
