//! Configuration: `portcullis.toml → FileConfig → Config`.
//!
//! `FileConfig` mirrors the file (serde, unknown keys rejected); [`Config`] is the
//! validated form the rest of the program uses. Without `--config`, the built-in
//! defaults serve on 127.0.0.1:8443 with the admin listener on 127.0.0.1:9900 and the
//! store under ./portcullis-data. Relative paths in a file are relative to that file.
//!
//! This build knows `[store]`, `[admin]`, `[runtime]`, `[http]`, `[[listener]]` and
//! `[[route]]`; the sections of later features (`[acme]`, `[jobs]`) are rejected as
//! unknown until the feature exists, rather than accepted and ignored. A route's handler
//! table is validated by the handler plugin named by its `type` (see `proxy::handler`).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The store directory when neither `--store` nor `[store] dir` says otherwise.
pub const DEFAULT_STORE: &str = "portcullis-data/store";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9900";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// A configuration problem, naming the file and, where known, line, column and key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

mod file {
    use super::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct FileConfig {
        pub store: Option<Store>,
        pub admin: Option<Admin>,
        pub runtime: Option<Runtime>,
        pub http: Option<Http>,
        #[serde(default)]
        pub listener: Vec<Listener>,
        #[serde(default)]
        pub route: Vec<Route>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Runtime {
        pub worker_threads: Option<usize>,
        pub drain_timeout_secs: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Http {
        pub listen: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Route {
        pub listener: Option<String>,
        pub hosts: Vec<String>,
        pub handler: toml::Table,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Store {
        pub dir: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Admin {
        pub listen: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Listener {
        pub name: String,
        pub bind: Vec<String>,
        #[serde(default)]
        pub no_sni: Option<String>,
        #[serde(default)]
        pub unknown_sni: Option<String>,
        pub max_connections: Option<usize>,
        pub handshake_timeout_secs: Option<u64>,
        pub idle_timeout_secs: Option<u64>,
        pub max_header_bytes: Option<usize>,
        pub send_root: Option<bool>,
    }
}

/// What a listener does with a ClientHello that has no SNI, or an unknown one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SniPolicy {
    /// Serve the default certificate (the guides' behaviour).
    #[default]
    Default,
    /// Abort the handshake.
    Reject,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    pub name: String,
    pub bind: Vec<SocketAddr>,
    pub no_sni: SniPolicy,
    pub unknown_sni: SniPolicy,
    /// Connections beyond this are closed at accept.
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// HTTP keep-alive and header-read timeout.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// Send the root certificate after the intermediates (normally not: clients have it).
    pub send_root: bool,
}

impl Listener {
    fn new(name: &str, bind: Vec<SocketAddr>) -> Self {
        Self {
            name: name.to_owned(),
            bind,
            no_sni: SniPolicy::Default,
            unknown_sni: SniPolicy::Default,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            send_root: false,
        }
    }
}

/// A host pattern of a route: exact, `*.parent` (one label) or `*` (any host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Wildcard(String),
    Any,
}

impl HostPattern {
    fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::Any);
        }
        crate::pki::validate_dns_pattern(s)?;
        let s = s.to_ascii_lowercase();
        Ok(match s.strip_prefix("*.") {
            Some(parent) => Self::Wildcard(parent.to_owned()),
            None => Self::Exact(s),
        })
    }

    /// Whether `host` (lowercase, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => name.eq_ignore_ascii_case(host),
            Self::Wildcard(parent) => {
                host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent))
            }
        }
    }
}

/// A route: host patterns on one listener, and the handler's raw options (validated by
/// the handler plugin when the snapshot is built).
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub listener: String,
    pub hosts: Vec<HostPattern>,
    pub handler_type: String,
    pub handler: toml::Table,
    /// "route[3]" in the file it came from, for error messages.
    pub origin: String,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    pub store_dir: PathBuf,
    pub admin_listen: SocketAddr,
    pub worker_threads: usize,
    pub drain_timeout: Duration,
    /// Plain-HTTP listeners that redirect to https.
    pub http_listen: Vec<SocketAddr>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
}

/// The page the built-in configuration serves.
pub const WELCOME: &str = "<!doctype html><title>Portcullis</title><h1>Portcullis is running</h1><p>This is the built-in welcome page. Configure listeners and routes in portcullis.toml.</p>\n";

impl Config {
    /// The built-in defaults.
    pub fn builtin() -> Self {
        let mut welcome = toml::Table::new();
        welcome.insert("type".into(), "static".into());
        welcome.insert("body".into(), WELCOME.into());
        welcome.insert("content_type".into(), "text/html; charset=utf-8".into());
        Self {
            source: None,
            store_dir: PathBuf::from(DEFAULT_STORE),
            admin_listen: DEFAULT_ADMIN.parse().expect("valid default"),
            worker_threads: 0,
            drain_timeout: Duration::from_secs(30),
            http_listen: Vec::new(),
            listeners: vec![Listener::new("default", vec![DEFAULT_LISTEN.parse().expect("valid default")])],
            routes: vec![Route {
                listener: "default".into(),
                hosts: vec![HostPattern::Any],
                handler_type: "static".into(),
                handler: welcome,
                origin: "built-in route".into(),
            }],
        }
    }

    /// Loads `path`, or the built-in defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let Some(path) = path else { return Ok(Self::builtin()) };
        let text = fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
        let raw: file::FileConfig = toml::from_str(&text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |span| line_col(&text, span.start));
            Error::Syntax { path: path.to_owned(), line, column, message: e.message().trim().to_owned() }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |key: String, message: String| Error::Invalid { path: path.to_owned(), key, message };
        let mut config = Self::builtin();
        config.source = Some(path.to_owned());
        if let Some(store) = raw.store {
            if store.dir.trim().is_empty() {
                return Err(invalid("store.dir".into(), "must not be empty".into()));
            }
            config.store_dir = base.join(store.dir);
        }
        if let Some(admin) = raw.admin {
            config.admin_listen = admin
                .listen
                .parse()
                .map_err(|_| invalid("admin.listen".into(), format!("{:?} is not an address:port", admin.listen)))?;
        }
        if let Some(rt) = raw.runtime {
            config.worker_threads = rt.worker_threads.unwrap_or(0);
            if let Some(secs) = rt.drain_timeout_secs {
                config.drain_timeout = Duration::from_secs(secs);
            }
        }
        if let Some(http) = raw.http {
            config.http_listen = http
                .listen
                .iter()
                .map(|a| a.parse().map_err(|_| invalid("http.listen".into(), format!("{a:?} is not an address:port"))))
                .collect::<Result<_, _>>()?;
        }
        if !raw.listener.is_empty() {
            config.listeners.clear();
        }
        if !raw.listener.is_empty() || !raw.route.is_empty() {
            // Configured routes replace the built-in welcome page.
            config.routes.clear();
        }
        for (i, l) in raw.listener.into_iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            if l.name.is_empty() || !l.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(invalid(key("name"), format!("{:?}: use letters, digits, - and _", l.name)));
            }
            if config.listeners.iter().any(|o| o.name == l.name) {
                return Err(invalid(key("name"), format!("{:?} is used by another listener", l.name)));
            }
            if l.bind.is_empty() {
                return Err(invalid(key("bind"), "needs at least one address:port".into()));
            }
            let bind = l
                .bind
                .iter()
                .map(|b| b.parse().map_err(|_| invalid(key("bind"), format!("{b:?} is not an address:port"))))
                .collect::<Result<_, _>>()?;
            let policy = |k: &str, v: Option<String>| match v.as_deref() {
                None | Some("default") => Ok(SniPolicy::Default),
                Some("reject") => Ok(SniPolicy::Reject),
                Some(other) => Err(invalid(key(k), format!("{other:?}: expected \"default\" or \"reject\""))),
            };
            let mut listener = Listener::new(&l.name, bind);
            listener.no_sni = policy("no_sni", l.no_sni)?;
            listener.unknown_sni = policy("unknown_sni", l.unknown_sni)?;
            if let Some(n) = l.max_connections {
                if n == 0 {
                    return Err(invalid(key("max_connections"), "must be at least 1".into()));
                }
                listener.max_connections = n;
            }
            let secs = |k: &str, v: Option<u64>, d: Duration| match v {
                Some(0) => Err(invalid(key(k), "must be at least 1 second".into())),
                Some(s) => Ok(Duration::from_secs(s)),
                None => Ok(d),
            };
            listener.handshake_timeout =
                secs("handshake_timeout_secs", l.handshake_timeout_secs, listener.handshake_timeout)?;
            listener.idle_timeout = secs("idle_timeout_secs", l.idle_timeout_secs, listener.idle_timeout)?;
            if let Some(n) = l.max_header_bytes {
                if n < 1024 {
                    return Err(invalid(key("max_header_bytes"), "must be at least 1024".into()));
                }
                listener.max_header_bytes = n;
            }
            listener.send_root = l.send_root.unwrap_or(false);
            config.listeners.push(listener);
        }
        for (i, r) in raw.route.into_iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            let listener = match (r.listener, config.listeners.len()) {
                (Some(name), _) => name,
                (None, 1) => config.listeners[0].name.clone(),
                (None, _) => return Err(invalid(key("listener"), "required when there are several listeners".into())),
            };
            if !config.listeners.iter().any(|l| l.name == listener) {
                return Err(invalid(key("listener"), format!("{listener:?} is not a [[listener]] name")));
            }
            if r.hosts.is_empty() {
                return Err(invalid(key("hosts"), "needs at least one host pattern (\"*\" for any)".into()));
            }
            let hosts = r
                .hosts
                .iter()
                .map(|h| HostPattern::parse(h).map_err(|e| invalid(key("hosts"), format!("{h:?}: {e}"))))
                .collect::<Result<_, _>>()?;
            let handler_type = match r.handler.get("type") {
                Some(toml::Value::String(t)) => t.clone(),
                _ => return Err(invalid(key("handler.type"), "missing; one of the handler types is required".into())),
            };
            config.routes.push(Route {
                listener,
                hosts,
                handler_type,
                handler: r.handler,
                origin: format!("route[{i}]"),
            });
        }
        Ok(config)
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.toml");
        #[allow(clippy::disallowed_methods)]
        fs::write(&path, text).unwrap();
        Config::load(Some(&path))
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = load_text("[store]\ndir = \"s\"\n\n[admin]\nlisten = \"127.0.0.1:1\"\nport = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(":6:1: unknown field `port`"), "{msg}");
    }

    #[test]
    fn listeners_and_relative_store() {
        let c = load_text(
            "[store]\ndir = \"data\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:443\", \"[::1]:443\"]\nno_sni = \"reject\"\n",
        )
        .unwrap();
        assert!(c.store_dir.ends_with("data"));
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].no_sni, SniPolicy::Reject);
        assert!(load_text("[[listener]]\nname = \"x\"\nbind = [\"nope\"]\n").is_err());
    }
}
