//! Configuration: `portcullis.toml → FileConfig → Config`.
//!
//! `FileConfig` mirrors the file (serde, unknown keys rejected); [`Config`] is the
//! validated form the rest of the program uses. Without `--config`, the built-in
//! defaults serve on 127.0.0.1:8443 with the admin listener on 127.0.0.1:9900 and the
//! store under ./portcullis-data. Relative paths in a file are relative to that file.
//!
//! This build knows the `[store]`, `[admin]` and `[[listener]]` sections; the sections
//! of later features are rejected as unknown until the feature exists, rather than
//! accepted and ignored.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
        #[serde(default)]
        pub listener: Vec<Listener>,
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

#[derive(Clone, Debug)]
pub struct Listener {
    pub name: String,
    pub bind: Vec<SocketAddr>,
    pub no_sni: SniPolicy,
    pub unknown_sni: SniPolicy,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    pub store_dir: PathBuf,
    pub admin_listen: SocketAddr,
    pub listeners: Vec<Listener>,
}

impl Config {
    /// The built-in defaults.
    pub fn builtin() -> Self {
        Self {
            source: None,
            store_dir: PathBuf::from(DEFAULT_STORE),
            admin_listen: DEFAULT_ADMIN.parse().expect("valid default"),
            listeners: vec![Listener {
                name: "default".into(),
                bind: vec![DEFAULT_LISTEN.parse().expect("valid default")],
                no_sni: SniPolicy::Default,
                unknown_sni: SniPolicy::Default,
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
        if !raw.listener.is_empty() {
            config.listeners.clear();
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
            config.listeners.push(Listener {
                name: l.name,
                bind,
                no_sni: policy("no_sni", l.no_sni)?,
                unknown_sni: policy("unknown_sni", l.unknown_sni)?,
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
