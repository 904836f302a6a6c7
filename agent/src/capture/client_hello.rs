//! A bounded parser for the start of a TLS ClientHello, as captured from the
//! first bytes of a TCP payload: it finds the server name (SNI) and the
//! offered ALPN protocols and nothing else.
//!
//! Input comes from any process on the host, so it is hostile: every length
//! is checked before use, nothing allocates more than the input, and a
//! ClientHello cut short by the capture bound still yields the SNI when the
//! extension arrived whole.

/// What the ClientHello offered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The `server_name` extension's host name, when present.
    pub server_name: Option<String>,
    /// ALPN protocol names offered, in order.
    pub alpn: Vec<String>,
}

/// Why the bytes are not a ClientHello whose SNI can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a TLS handshake record")]
    NotHandshake,
    #[error("handshake message is not a ClientHello")]
    NotClientHello,
    #[error("ClientHello truncated before {0}")]
    Truncated(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
}

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST: u8 = 0;
/// Longest DNS name.
const MAX_HOST_NAME: usize = 253;

/// A bounds-checked reader over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.bytes.len() < n {
            return Err(HelloError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self, what: &'static str) -> Result<usize, HelloError> {
        let b = self.take(3, what)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// A vector with a `width`-byte length prefix.
    fn vector(&mut self, width: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = match width {
            1 => usize::from(self.u8(what)?),
            _ => usize::from(self.u16(what)?),
        };
        self.take(len, what)
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Parses the start of a TCP payload that begins a TLS ClientHello.
pub fn parse(payload: &[u8]) -> Result<ClientHello, HelloError> {
    let mut record = Reader::new(payload);
    if record.u8("record type")? != RECORD_HANDSHAKE {
        return Err(HelloError::NotHandshake);
    }
    let major = record.u8("record version")?;
    record.u8("record version")?;
    if major != 3 {
        return Err(HelloError::NotHandshake);
    }
    let record_len = usize::from(record.u16("record length")?);
    // The record may continue past what was captured; parse what is here.
    let complete = record.bytes.len() >= record_len;
    let body = &record.bytes[..record.bytes.len().min(record_len)];

    let mut hello = Reader::new(body);
    if hello.u8("handshake type")? != HANDSHAKE_CLIENT_HELLO {
        return Err(HelloError::NotClientHello);
    }
    let declared = hello.u24("handshake length")?;
    if declared < 38 {
        return Err(HelloError::Malformed("handshake length"));
    }
    hello.take(2, "client version")?;
    hello.take(32, "random")?;
    let session_id = hello.vector(1, "session id")?;
    if session_id.len() > 32 {
        return Err(HelloError::Malformed("session id"));
    }
    let suites = hello.vector(2, "cipher suites")?;
    if suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher suites"));
    }
    hello.vector(1, "compression methods")?;
    if hello.is_empty() {
        if !complete {
            return Err(HelloError::Truncated("extensions"));
        }
        // A ClientHello without extensions has no SNI.
        return Ok(ClientHello::default());
    }
    let extensions_len = usize::from(hello.u16("extensions length")?);
    let available = hello.bytes.len().min(extensions_len);
    let mut extensions = Reader::new(&hello.bytes[..available]);

    let mut out = ClientHello::default();
    while !extensions.is_empty() {
        let Ok(kind) = extensions.u16("extension type") else {
            break;
        };
        let Ok(data) = extensions.vector(2, "extension") else {
            break;
        };
        match kind {
            EXT_SERVER_NAME => out.server_name = Some(server_name(data)?),
            EXT_ALPN => out.alpn = alpn(data)?,
            _ => {}
        }
    }
    if out.server_name.is_none() && available < extensions_len {
        // The capture bound cut the extensions before any server_name.
        return Err(HelloError::Truncated("server_name extension"));
    }
    Ok(out)
}

fn server_name(data: &[u8]) -> Result<String, HelloError> {
    let mut ext = Reader::new(data);
    let mut list = Reader::new(ext.vector(2, "server name list")?);
    while !list.is_empty() {
        let name_type = list.u8("server name type")?;
        let name = list.vector(2, "server name")?;
        if name_type == NAME_TYPE_HOST {
            return host_name(name);
        }
    }
    Err(HelloError::Malformed("server name list"))
}

/// A host name as DNS allows it: letters, digits, '-', '_', '.', at most 253 bytes.
fn host_name(name: &[u8]) -> Result<String, HelloError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_HOST_NAME
        && name.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(HelloError::Malformed("server name"));
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

fn alpn(data: &[u8]) -> Result<Vec<String>, HelloError> {
    let mut ext = Reader::new(data);
    let mut list = Reader::new(ext.vector(2, "alpn list")?);
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let protocol = list.vector(1, "alpn protocol")?;
        if protocol.is_empty() || !protocol.iter().all(|b| b.is_ascii_graphic()) {
            return Err(HelloError::Malformed("alpn protocol"));
        }
        protocols.push(String::from_utf8_lossy(protocol).into_owned());
    }
    Ok(protocols)
}

/// Builds ClientHello bytes, for tests and fuzzing.
pub mod build {
    fn vec16(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// A ClientHello record carrying `sni` (if any) and `alpn` protocols,
    /// with a filler extension of `padding` bytes before them.
    pub fn client_hello(sni: Option<&str>, alpn: &[&str], padding: usize) -> Vec<u8> {
        let mut extensions = Vec::new();
        if padding > 0 {
            extensions.extend_from_slice(&21u16.to_be_bytes());
            extensions.extend(vec16(&vec![0; padding]));
        }
        if let Some(name) = sni {
            let mut entry = vec![0u8];
            entry.extend(vec16(name.as_bytes()));
            extensions.extend_from_slice(&0u16.to_be_bytes());
            extensions.extend(vec16(&vec16(&entry)));
        }
        if !alpn.is_empty() {
            let list: Vec<u8> = alpn.iter().flat_map(|p| std::iter::once(p.len() as u8).chain(p.bytes())).collect();
            extensions.extend_from_slice(&16u16.to_be_bytes());
            extensions.extend(vec16(&vec16(&list)));
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend(vec16(&[0x13, 0x01, 0x13, 0x02]));
        body.extend_from_slice(&[1, 0]);
        body.extend(vec16(&extensions));
        let mut handshake = vec![0x01];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend(vec16(&handshake));
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_sni_and_alpn() {
        let bytes = build::client_hello(Some("API.OpenAI.com"), &["h2", "http/1.1"], 100);
        let hello = parse(&bytes).expect("valid hello");
        assert_eq!(hello.server_name.as_deref(), Some("api.openai.com"));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
    }

    #[test]
    fn hello_without_sni() {
        let bytes = build::client_hello(None, &[], 0);
        assert_eq!(parse(&bytes).expect("valid").server_name, None);
    }

    #[test]
    fn truncation_before_sni_is_reported() {
        let bytes = build::client_hello(Some("api.anthropic.com"), &[], 400);
        assert_eq!(parse(&bytes[..200]), Err(HelloError::Truncated("server_name extension")));
        for cut in 0..60 {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_other_records_and_bad_names() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotHandshake));
        let mut server_hello = build::client_hello(Some("a.example"), &[], 0);
        server_hello[5] = 0x02;
        assert_eq!(parse(&server_hello), Err(HelloError::NotClientHello));
        let bad = build::client_hello(Some("evil\u{0}name"), &[], 0);
        assert_eq!(parse(&bad), Err(HelloError::Malformed("server name")));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_hellos_never_panic(
            flips in proptest::collection::vec((0usize..300, any::<u8>()), 1..10),
            cut in 0usize..400,
        ) {
            let mut bytes = build::client_hello(Some("api.mistral.ai"), &["h2"], 50);
            for (at, value) in flips {
                if let Some(b) = bytes.get_mut(at) { *b = value; }
            }
            bytes.truncate(cut);
            let _ = parse(&bytes);
        }

        #[test]
        fn valid_names_round_trip(name in "[a-z0-9]{1,20}(\\.[a-z0-9-]{1,20}){0,4}", padding in 0usize..300) {
            let bytes = build::client_hello(Some(&name), &[], padding);
            prop_assert_eq!(parse(&bytes).expect("valid").server_name, Some(name));
        }
    }
}
