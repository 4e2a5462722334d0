//! `static`: a fixed response (maintenance pages, health answers, the welcome page).

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde::Deserialize;

use super::{Handler, HttpHandler};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    body: String,
    #[serde(default = "plain")]
    content_type: String,
}

fn ok() -> u16 {
    200
}

fn plain() -> String {
    "text/plain; charset=utf-8".into()
}

struct Static {
    status: StatusCode,
    body: Bytes,
    content_type: hyper::header::HeaderValue,
}

pub(super) fn build(table: &toml::Table) -> Result<Handler, super::OptionError> {
    let o: Options = super::options(table)?;
    let status = StatusCode::from_u16(o.status)
        .map_err(|_| super::bad("status", format!("{} is not an HTTP status", o.status)))?;
    let content_type = o
        .content_type
        .parse()
        .map_err(|_| super::bad("content_type", format!("{:?} is not a header value", o.content_type)))?;
    Ok(Handler::Http(std::sync::Arc::new(Static { status, body: Bytes::from(o.body), content_type })))
}

impl HttpHandler for Static {
    fn call(
        &self,
        _req: hyper::Request<hyper::body::Incoming>,
        _conn: super::HttpConn,
    ) -> super::BoxFuture<Response<crate::http::Body>> {
        let mut resp = Response::new(crate::http::full(self.body.clone()));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, self.content_type.clone());
        Box::pin(std::future::ready(resp))
    }
}
