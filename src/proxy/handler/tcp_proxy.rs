//! `tcp_proxy`: the TLS-terminated byte stream, copied both ways to an upstream.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{ConnInfo, Handler, Io, StreamHandler};

pub(super) struct TcpProxy {
    upstream: String,
    connect_timeout: Duration,
}

pub(super) fn build(table: &toml::Table) -> Result<Handler, super::OptionError> {
    let (upstream, connect_timeout) = super::StreamOptions::parse(table)?;
    Ok(Handler::Stream(Arc::new(TcpProxy { upstream, connect_timeout })))
}

/// Connects to `upstream` within `timeout`, counting failures.
pub(super) async fn connect(upstream: &str, timeout: Duration) -> Option<TcpStream> {
    match super::dial(upstream, timeout).await {
        Ok(s) => Some(s),
        Err(e) => {
            crate::metrics::upstream_error();
            tracing::warn!(upstream, error = %e, "upstream connect failed");
            None
        }
    }
}

impl StreamHandler for TcpProxy {
    fn serve(&self, mut io: Box<dyn Io>, _conn: ConnInfo) -> super::BoxFuture<()> {
        let upstream = self.upstream.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let Some(mut up) = connect(&upstream, timeout).await else { return };
            let _ = tokio::io::copy_bidirectional(&mut io, &mut up).await;
        })
    }
}
