//! `passthrough`: TLS is not terminated. The ClientHello is read (it may span several
//! TLS records), its SNI parsed, and the bytes read are sent to the upstream ahead of the
//! rest of the connection, so the upstream's own certificate reaches the client.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Handler;

pub struct Passthrough {
    upstream: String,
    connect_timeout: Duration,
}

pub(super) fn build(table: &toml::Table) -> Result<Handler, super::OptionError> {
    let (upstream, connect_timeout) = super::StreamOptions::parse(table)?;
    Ok(Handler::Passthrough(Arc::new(Passthrough { upstream, connect_timeout })))
}

impl Passthrough {
    /// Sends `hello` (the bytes already read) to the upstream, then splices the rest.
    /// Returns the bytes carried each way, `hello` included.
    pub async fn splice(&self, mut client: TcpStream, hello: &[u8]) -> (u64, u64) {
        let Some(mut up) = super::tcp_proxy::connect(&self.upstream, self.connect_timeout).await else { return (0, 0) };
        if up.write_all(hello).await.is_err() {
            return (0, 0);
        }
        let (a, b) = tokio::io::copy_bidirectional(&mut client, &mut up).await.unwrap_or((0, 0));
        (a + hello.len() as u64, b)
    }
}

/// Largest ClientHello read before deciding (post-quantum key shares make them a few
/// KiB; TLS allows 2^24, which an edge does not buffer for a stranger).
pub const MAX_HELLO: usize = 32 * 1024;

/// What the first bytes of a connection say about SNI.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked {
    /// A complete ClientHello, with its server name (as sent) if it has one.
    Hello(Option<String>),
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello, or one larger than [`MAX_HELLO`].
    NotTls,
}

/// Parses the SNI out of the ClientHello at the start of `buf`, reassembled from as
/// many handshake records as it spans (RFC 8446 §5.1 lets a sender fragment it).
pub fn parse_sni(buf: &[u8]) -> Peeked {
    let mut hello = Vec::new();
    let mut rest = buf;
    loop {
        // Record header: type 22 (handshake), version 3.x, length.
        if rest.len() < 5 {
            return Peeked::Incomplete;
        }
        if rest[0] != 22 || rest[1] != 3 {
            return Peeked::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 {
            return Peeked::NotTls; // RFC 8446 §5.1: no empty handshake fragments
        }
        if rest.len() < 5 + len {
            return Peeked::Incomplete;
        }
        // The common case, one record: parsed in place.
        let fragment = &rest[5..5 + len];
        let message = if hello.is_empty() && hello_len(fragment).is_some_and(|n| n <= fragment.len()) {
            fragment
        } else {
            hello.extend_from_slice(fragment);
            &hello
        };
        match hello_len(message) {
            Some(n) if n > MAX_HELLO => return Peeked::NotTls,
            Some(n) if n <= message.len() => {
                return match client_hello_sni(&mut Reader(&message[..n])) {
                    Some(name) => Peeked::Hello(name.map(str::to_owned)),
                    None => Peeked::NotTls,
                };
            }
            _ => rest = &rest[5 + len..],
        }
    }
}

/// The length of the handshake message (header included) that `m` starts, once its
/// 4-byte header is there.
fn hello_len(m: &[u8]) -> Option<usize> {
    (m.len() >= 4).then(|| 4 + ((usize::from(m[1]) << 16) | (usize::from(m[2]) << 8) | usize::from(m[3])))
}

fn client_hello_sni<'a>(r: &mut Reader<'a>) -> Option<Option<&'a str>> {
    {
        if r.u8()? != 1 {
            return None; // not a ClientHello
        }
        let body_len = r.u24()?;
        let mut r = Reader(r.take(body_len)?);
        r.take(2 + 32)?; // version, random
        let sid = usize::from(r.u8()?);
        r.take(sid)?;
        let suites = r.u16()?;
        r.take(suites)?;
        let comp = usize::from(r.u8()?);
        r.take(comp)?;
        if r.0.is_empty() {
            return Some(None);
        }
        let ext_len = r.u16()?;
        let mut exts = Reader(r.take(ext_len)?);
        while !exts.0.is_empty() {
            let ty = exts.u16()?;
            let len = exts.u16()?;
            let data = exts.take(len)?;
            if ty == 0 {
                let mut d = Reader(data);
                let list_len = d.u16()?;
                let mut list = Reader(d.take(list_len)?);
                while !list.0.is_empty() {
                    let name_type = list.u8()?;
                    let name_len = list.u16()?;
                    let name = list.take(name_len)?;
                    if name_type == 0 {
                        return std::str::from_utf8(name).ok().map(Some);
                    }
                }
            }
        }
        Some(None)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, captured through an in-memory client.
    fn hello(sni: &str) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.roots.clear();
        let config = rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_sni_in_a_real_client_hello() {
        let h = hello("Pass.Example.test");
        let name = || Peeked::Hello(Some("Pass.Example.test".to_owned()));
        assert_eq!(parse_sni(&h), name(), "as sent: the caller lowercases");
        assert_eq!(parse_sni(&h[..h.len() - 1]), Peeked::Incomplete);
        assert_eq!(parse_sni(&h[..3]), Peeked::Incomplete);
        assert_eq!(parse_sni(b"GET / HTTP/1.1\r\n"), Peeked::NotTls);
        // The partial hello: a record header, then two bytes of a 512-byte record.
        assert_eq!(parse_sni(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Peeked::Incomplete);

        // The same hello fragmented over three records, at any split points.
        let body = &h[5..];
        for (a, b) in [(1, 2), (3, 4), (10, 200), (body.len() - 2, body.len() - 1)] {
            let mut split = Vec::new();
            for part in [&body[..a], &body[a..b], &body[b..]] {
                split.extend_from_slice(&[0x16, 0x03, 0x01]);
                split.extend_from_slice(&(part.len() as u16).to_be_bytes());
                split.extend_from_slice(part);
            }
            assert_eq!(parse_sni(&split), name(), "split at {a}, {b}");
            assert_eq!(parse_sni(&split[..split.len() - 1]), Peeked::Incomplete);
        }
        // A message that announces more than MAX_HELLO is refused without waiting for it.
        assert_eq!(parse_sni(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00]), Peeked::NotTls);
    }
}
