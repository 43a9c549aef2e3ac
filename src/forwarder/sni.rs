//! The server name a TLS client asks for, read from its ClientHello without
//! terminating TLS. Pure: the caller reads the bytes (within
//! [`MAX_HELLO`] and a time limit) and asks after each read.

use tls_parser::{
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, TlsRecordType, nom,
    parse_tls_extensions, parse_tls_raw_record, parse_tls_record_with_header,
};

/// The most of a connection read to find its server name: one TLS record
/// (16 KiB and its 5-byte header), which holds any ClientHello a browser,
/// `openssl` or a database driver sends, post-quantum key shares included.
pub const MAX_HELLO: usize = (1 << 14) + 5;

/// What the first bytes of a connection say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// The ClientHello's record is not complete yet: read on.
    Incomplete,
    /// A ClientHello, with the server name it asks for (lower case, without
    /// a trailing dot), or `None` when it names none.
    ServerName(Option<String>),
    /// Not a TLS ClientHello in one record: there is no name to route by.
    NotClientHello,
}

/// Reads the first TLS record of `bytes`.
pub fn parse(bytes: &[u8]) -> Hello {
    // A handshake record of TLS 1.x holding a ClientHello starts 0x16 0x03
    // and its message 0x01: anything else is known to be something else from
    // its first bytes, before a length that only looks like one is waited for.
    let start = [0x16, 0x03, 0x00, 0x00, 0x00, 0x01];
    let known = [true, true, false, false, false, true];
    if bytes
        .iter()
        .zip(start.iter().zip(known))
        .any(|(b, (want, known))| known && b != want)
    {
        return Hello::NotClientHello;
    }
    let record = match parse_tls_raw_record(bytes) {
        Ok((_, record)) => record,
        Err(nom::Err::Incomplete(_)) if bytes.len() < MAX_HELLO => return Hello::Incomplete,
        Err(_) => return Hello::NotClientHello,
    };
    if record.hdr.record_type != TlsRecordType::Handshake {
        return Hello::NotClientHello;
    }
    let Ok((_, messages)) = parse_tls_record_with_header(record.data, &record.hdr) else {
        return Hello::NotClientHello;
    };
    let Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello))) = messages.first()
    else {
        return Hello::NotClientHello;
    };
    let Some(extensions) = hello.ext else {
        return Hello::ServerName(None);
    };
    let Ok((_, extensions)) = parse_tls_extensions(extensions) else {
        return Hello::NotClientHello;
    };
    let name = extensions.iter().find_map(|e| match e {
        TlsExtension::SNI(names) => names
            .iter()
            .find(|(kind, _)| *kind == SNIType::HostName)
            .and_then(|(_, name)| std::str::from_utf8(name).ok())
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase()),
        _ => None,
    });
    Hello::ServerName(name)
}

/// A ClientHello record naming `server_name` (or none), as a client sends
/// it: for tests and benchmarks.
pub fn client_hello(server_name: Option<&str>) -> Vec<u8> {
    let mut extensions = Vec::new();
    if let Some(name) = server_name {
        let name = name.as_bytes();
        let list_len = name.len() + 3;
        extensions.extend_from_slice(&[0x00, 0x00]);
        extensions.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        extensions.extend_from_slice(&(list_len as u16).to_be_bytes());
        extensions.push(0x00);
        extensions.extend_from_slice(&(name.len() as u16).to_be_bytes());
        extensions.extend_from_slice(name);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_server_name_is_read_once_the_record_is_whole() {
        let hello = client_hello(Some("DB.Example.com."));
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Hello::Incomplete, "cut at {cut}");
        }
        assert_eq!(
            parse(&hello),
            Hello::ServerName(Some("db.example.com".into()))
        );
        assert_eq!(parse(&client_hello(None)), Hello::ServerName(None));
    }

    #[test]
    fn what_is_not_a_client_hello_is_said_so() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Hello::NotClientHello);
        assert_eq!(parse(b"SSH-2.0-OpenSSH_9.6\r\n"), Hello::NotClientHello);
        assert_eq!(
            // An `unrecognized_name` alert (RFC 6066).
            parse(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]),
            Hello::NotClientHello,
            "an alert record"
        );
        // A record header announcing more than a record may hold.
        assert_eq!(
            parse(&[0x16, 0x03, 0x01, 0xff, 0xff]),
            Hello::NotClientHello
        );
    }

    #[test]
    fn a_real_client_hello_names_its_server() {
        // Captured from `openssl s_client -servername pg.example.com`
        // (OpenSSL 3): TLS 1.3 with its usual extensions.
        let hello = include_bytes!("testdata/openssl-client-hello.bin");
        assert_eq!(
            parse(hello),
            Hello::ServerName(Some("pg.example.com".into()))
        );
    }

    proptest! {
        /// Whatever the bytes, parsing ends in an answer, never a panic, and
        /// more than a record's worth is never "incomplete".
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn any_name_round_trips(name in "[a-z0-9]{1,20}(\\.[a-z0-9]{1,20}){0,4}") {
            prop_assert_eq!(parse(&client_hello(Some(&name))), Hello::ServerName(Some(name)));
        }
    }
}
