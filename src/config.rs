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
    /// "FILE: route[3]": where it was written, for error messages.
    pub origin: String,
    /// "route[3]" counted over all files: the metric label.
    pub label: String,
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
                label: "built-in".into(),
            }],
        }
    }

    /// Loads `path`, or the built-in defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let Some(path) = path else { return Ok(Self::builtin()) };
        let mut raw = parse_file(path)?;
        // Drop-in fragments: conf.d/*.toml beside the main file, merged in name order.
        // A section in a fragment replaces the main file's; listeners and routes add up.
        let mut listener_files = vec![path.to_owned(); raw.listener.len()];
        let mut route_files: Vec<(PathBuf, usize)> = (0..raw.route.len()).map(|i| (path.to_owned(), i)).collect();
        for fragment in fragments(path)? {
            let f = parse_file(&fragment)?;
            macro_rules! replace {
                ($($field:ident),*) => { $( if f.$field.is_some() { raw.$field = f.$field; } )* };
            }
            replace!(store, admin, runtime, http);
            listener_files.extend(std::iter::repeat_n(fragment.clone(), f.listener.len()));
            route_files.extend((0..f.route.len()).map(|i| (fragment.clone(), i)));
            raw.listener.extend(f.listener);
            raw.route.extend(f.route);
        }
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
            let file = &listener_files[i];
            let invalid = |key: String, message: String| Error::Invalid { path: file.clone(), key, message };
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
            let (file, j) = &route_files[i];
            let invalid = |key: String, message: String| Error::Invalid { path: file.clone(), key, message };
            let key = |k: &str| format!("route[{j}].{k}");
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
                origin: format!("{}: route[{j}]", file.display()),
                label: format!("route[{i}]"),
            });
        }
        Ok(config)
    }
}

/// Parses one file, naming it, the line and the column on error.
fn parse_file(path: &Path) -> Result<file::FileConfig, Error> {
    let text = fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |span| line_col(&text, span.start));
        Error::Syntax { path: path.to_owned(), line, column, message: e.message().trim().to_owned() }
    })
}

/// The drop-in directory of a main config file.
pub fn fragment_dir(main: &Path) -> PathBuf {
    main.parent().unwrap_or(Path::new(".")).join("conf.d")
}

/// conf.d/*.toml (not dot-files), sorted by name.
fn fragments(main: &Path) -> Result<Vec<PathBuf>, Error> {
    let dir = fragment_dir(main);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Read { path: dir, source }),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
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
    #[allow(clippy::disallowed_methods)]
    fn fragments_merge_in_name_order_and_errors_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("portcullis.toml");
        fs::write(&main, "[[listener]]\nname = \"a\"\nbind = [\"127.0.0.1:1\"]\n").unwrap();
        fs::create_dir(dir.path().join("conf.d")).unwrap();
        fs::write(dir.path().join("conf.d/20-b.toml"), "[[listener]]\nname = \"b\"\nbind = [\"127.0.0.1:2\"]\n")
            .unwrap();
        fs::write(dir.path().join("conf.d/10-admin.toml"), "[admin]\nlisten = \"127.0.0.1:3\"\n").unwrap();
        fs::write(dir.path().join("conf.d/.editor.toml"), "garbage").unwrap();
        let c = Config::load(Some(&main)).unwrap();
        let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.admin_listen.port(), 3);
        fs::write(
            dir.path().join("conf.d/30-bad.toml"),
            "\n[[route]]\nhosts = [\"*\"]\nhandler = { type = \"static\" }\nlistener = \"nope\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains("30-bad.toml: route[0].listener"), "{err}");
        fs::write(dir.path().join("conf.d/30-bad.toml"), "[[route]\n").unwrap();
        let err = Config::load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains("30-bad.toml:1:"), "{err}");
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
