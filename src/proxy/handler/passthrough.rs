//! `passthrough`: TLS is not terminated. The ClientHello is read with `peek`, its SNI
//! parsed in place, and the untouched bytes spliced to the upstream, whose own
//! certificate reaches the client.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::Handler;

pub struct Passthrough {
    upstream: String,
    connect_timeout: Duration,
}

pub(super) fn build(table: &toml::Table) -> Result<Handler, String> {
    let (upstream, connect_timeout) = super::StreamOptions::parse(table)?;
    Ok(Handler::Passthrough(Arc::new(Passthrough { upstream, connect_timeout })))
}

impl Passthrough {
    /// Splices the client's connection (nothing consumed yet) to the upstream.
    pub async fn splice(&self, mut client: TcpStream) -> (u64, u64) {
        let Some(mut up) = super::tcp_proxy::connect(&self.upstream, self.connect_timeout).await else { return (0, 0) };
        tokio::io::copy_bidirectional(&mut client, &mut up).await.unwrap_or((0, 0))
    }
}

/// What the first bytes of a connection say about SNI.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked<'a> {
    /// A complete ClientHello, with its server name if it has one.
    Hello(Option<&'a str>),
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello.
    NotTls,
}

/// Parses the SNI out of a TLS record holding a ClientHello, without copying.
pub fn parse_sni(buf: &[u8]) -> Peeked<'_> {
    // Record header: type 22 (handshake), version, length.
    if buf.len() < 5 {
        return Peeked::Incomplete;
    }
    if buf[0] != 22 || buf[1] != 3 {
        return Peeked::NotTls;
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if buf.len() < 5 + len {
        return Peeked::Incomplete;
    }
    match client_hello_sni(&mut Reader(&buf[5..5 + len])) {
        Some(name) => Peeked::Hello(name),
        None => Peeked::NotTls,
    }
}

fn client_hello_sni<'a>(r: &mut Reader<'a>) -> Option<Option<&'a str>> {
    {
        if r.u8()? != 1 {
            return None; // not a ClientHello
        }
        let body_len = r.u24()?;
        // A ClientHello split over several records: parse what the first one holds.
        let mut r = Reader(r.take(body_len.min(r.0.len()))?);
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
        assert_eq!(parse_sni(&h), Peeked::Hello(Some("Pass.Example.test")), "as sent: the caller lowercases");
        assert_eq!(parse_sni(&h[..h.len() - 1]), Peeked::Incomplete);
        assert_eq!(parse_sni(&h[..3]), Peeked::Incomplete);
        assert_eq!(parse_sni(b"GET / HTTP/1.1\r\n"), Peeked::NotTls);
    }
}
