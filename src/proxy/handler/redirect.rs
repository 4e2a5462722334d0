//! `redirect`: answers every request with a redirect to `to` plus the request's path.

use hyper::{Response, StatusCode};
use serde::Deserialize;

use super::{Handler, HttpHandler};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Target prefix, e.g. "https://www.example.com".
    to: String,
    #[serde(default = "permanent")]
    status: u16,
}

fn permanent() -> u16 {
    301
}

struct Redirect {
    to: String,
    status: StatusCode,
}

pub(super) fn build(table: &toml::Table) -> Result<Handler, super::OptionError> {
    let o: Options = super::options(table)?;
    if !(o.to.starts_with("https://") || o.to.starts_with("http://")) {
        return Err(super::bad("to", format!("{:?} must start with https:// or http://", o.to)));
    }
    if ![301, 302, 303, 307, 308].contains(&o.status) {
        return Err(super::bad("status", format!("{} is not a redirect status (301, 302, 303, 307, 308)", o.status)));
    }
    let status = StatusCode::from_u16(o.status).map_err(|e| super::bad("status", e.to_string()))?;
    Ok(Handler::Http(std::sync::Arc::new(Redirect { to: o.to.trim_end_matches('/').to_owned(), status })))
}

impl HttpHandler for Redirect {
    fn call(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        _conn: super::HttpConn,
    ) -> super::BoxFuture<Response<crate::http::Body>> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("{}{path}", self.to);
        let mut resp = crate::http::text(self.status, format!("moved to {location}\n"));
        if let Ok(v) = location.parse() {
            resp.headers_mut().insert(hyper::header::LOCATION, v);
        }
        Box::pin(std::future::ready(resp))
    }
}
