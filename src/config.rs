//! Configuration: `portcullis.toml → FileConfig → Config`.
//!
//! `FileConfig` mirrors the file (serde, unknown keys rejected); [`Config`] is the
//! validated form the rest of the program uses. Without `--config`, the built-in
//! defaults serve on 127.0.0.1:8443 with the admin listener on 127.0.0.1:9900 and the
//! store under ./portcullis-data. Relative paths in a file are relative to that file.
//!
//! Sections: `[store]`, `[admin]`, `[runtime]`, `[http]`, `[acme]` (with
//! `[[acme.certificate]]`), `[alerts]` (with `[alerts.smtp]`), `[jobs]`, `[cluster]`, `[[listener]]`
//! and `[[route]]`. A route's handler table is validated by the handler plugin named by
//! its `type` (see `proxy::handler`).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The store directory when neither `--store` nor `[store] dir` says otherwise.
pub const DEFAULT_STORE: &str = "portcullis-data/store";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9900";
/// Per-certificate series in one `/metrics` scrape: enough for any store that is not a
/// hosting platform's, and a bound on one that is.
pub const DEFAULT_CERTIFICATE_SERIES: usize = 1000;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// A configuration problem, naming the file and, where known, line, column and key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    /// Nothing but whitespace: a write caught half-way (truncated, not yet written) or a
    /// mistake. Taken as "built-in defaults" it would close every configured listener.
    #[error(
        "{path}: the file is empty (a write in progress, or a mistake); delete it to run with the built-in defaults"
    )]
    Empty { path: PathBuf },
    #[error("{path}{}: {key}: {message}", line.map_or(String::new(), |l| format!(":{l}")))]
    Invalid { path: PathBuf, line: Option<usize>, key: String, message: String },
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
        pub acme: Option<Acme>,
        pub alerts: Option<Alerts>,
        pub jobs: Option<Jobs>,
        pub cluster: Option<Cluster>,
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
        pub redirect_port: Option<u16>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Acme {
        pub directory: Option<String>,
        #[serde(default)]
        pub contact: Vec<String>,
        pub agree_tos: Option<bool>,
        pub ca_bundle: Option<String>,
        pub http_listen: Option<super::OneOrMany>,
        pub renew_before_days: Option<f64>,
        pub alert_before_days: Option<f64>,
        pub key: Option<String>,
        pub reuse_key: Option<bool>,
        pub eab_kid: Option<String>,
        pub eab_hmac_key_file: Option<String>,
        pub dns_command: Option<String>,
        pub dns_wait_secs: Option<u64>,
        #[serde(default)]
        pub certificate: Vec<AcmeCertificate>,
        pub on_demand: Option<OnDemand>,
        #[serde(default)]
        pub dns_update: Vec<DnsUpdate>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct DnsUpdate {
        pub zone: String,
        pub server: String,
        pub key_name: String,
        pub algorithm: Option<String>,
        pub secret_file: String,
        pub check_servers: Option<Vec<String>>,
        pub propagation_timeout_secs: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct OnDemand {
        pub ask: Option<String>,
        #[serde(default)]
        pub allow: Vec<String>,
        pub rate_limit: Option<u32>,
        pub rate_period_secs: Option<u64>,
        pub max_certificates: Option<usize>,
        pub failure_hold_secs: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct AcmeCertificate {
        pub hostnames: Vec<String>,
        pub name: Option<String>,
        pub key: Option<String>,
        pub listeners: Option<Vec<String>>,
        pub challenge: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Alerts {
        pub alert_command: Option<String>,
        pub smtp: Option<Smtp>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Smtp {
        pub host: String,
        pub port: Option<u16>,
        pub security: Option<String>,
        pub username: Option<String>,
        pub password_file: Option<String>,
        pub ca_bundle: Option<String>,
        pub from: String,
        pub to: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Cluster {
        pub etcd: Vec<String>,
        pub prefix: Option<String>,
        pub node: Option<String>,
        pub ca_file: Option<String>,
        pub cert_file: Option<String>,
        pub key_file: Option<String>,
        pub username: Option<String>,
        pub password_file: Option<String>,
        pub secret_key_file: String,
        #[serde(default)]
        pub previous_secret_key_files: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Jobs {
        pub dir: String,
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
        pub certificate_series: Option<i64>,
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
        pub write_timeout_secs: Option<u64>,
        pub max_header_bytes: Option<usize>,
        pub send_root: Option<bool>,
        pub on_demand: Option<bool>,
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
    /// How long a write to the client may make no progress (a client that does not read).
    pub write_timeout: Duration,
    pub max_header_bytes: usize,
    /// Send the root certificate after the intermediates (normally not: clients have it).
    pub send_root: bool,
    /// Order a certificate at the first handshake for an unknown name that
    /// `[acme.on_demand]` allows.
    pub on_demand: bool,
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
            write_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            send_root: false,
            on_demand: false,
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

/// A string or an array of strings in the file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// Let's Encrypt's production directory: the default `[acme] directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[acme]`: the account, the HTTP-01 responder and the renewal policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Acme {
    pub directory: String,
    pub contact: Vec<String>,
    /// Trust only these roots for the ACME server's API (private or test CAs).
    pub ca_bundle: Option<PathBuf>,
    /// Plain-HTTP addresses answering HTTP-01 challenges (everything else redirects).
    pub http_listen: Vec<SocketAddr>,
    /// Renew when less than this is left (capped at a third of the lifetime).
    pub renew_before: Duration,
    /// Error state and alerts below this, scaled like `renew_before`.
    pub alert_before: Duration,
    pub key_type: crate::pki::KeyType,
    /// Keep the key across renewals (default: a fresh key each time).
    pub reuse_key: bool,
    /// External Account Binding: key id and the file holding the base64url HMAC key.
    pub eab: Option<(String, PathBuf)>,
    /// `[[acme.certificate]]`: ensured on start and on every reload.
    pub certificates: Vec<AcmeCertificate>,
    /// http-01 when a plain-HTTP listener exists, else tls-alpn-01.
    pub default_challenge: Challenge,
    /// DNS-01: run with `sh -c` to place (`present`) and remove (`cleanup`) the TXT
    /// record, the details in PORTCULLIS_DNS_* environment variables.
    pub dns_command: Option<String>,
    /// How long to wait after `present` before asking the CA (DNS propagation).
    pub dns_wait: Duration,
    /// `[acme.on_demand]`: which unknown names listeners with `on_demand` may order.
    pub on_demand: Option<OnDemand>,
    /// `[[acme.dns_update]]`: zones whose DNS-01 records are placed by RFC 2136 updates.
    pub dns_updates: Vec<DnsUpdate>,
}

/// One `[[acme.dns_update]]`: a zone whose primary takes TSIG-signed RFC 2136 updates.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsUpdate {
    /// Lowercase, without the trailing dot.
    pub zone: String,
    /// The zone's primary.
    pub server: SocketAddr,
    pub key_name: String,
    /// hmac-sha256, hmac-sha384 or hmac-sha512.
    pub algorithm: String,
    /// The base64 TSIG secret (as `tsig-keygen` prints it), read at each use.
    pub secret_file: PathBuf,
    /// Queried until each serves the record; empty: the zone's NS (port 53).
    pub check_servers: Vec<SocketAddr>,
    pub propagation_timeout: Duration,
}

impl Acme {
    /// The `[[acme.dns_update]]` zone that holds `name`'s records (the longest match).
    pub fn dns_update_for(&self, name: &str) -> Option<&DnsUpdate> {
        let name = name.trim_start_matches("*.");
        self.dns_updates
            .iter()
            .filter(|u| name == u.zone || name.strip_suffix(&u.zone).is_some_and(|rest| rest.ends_with('.')))
            .max_by_key(|u| u.zone.len())
    }

    /// Whether DNS-01 can place a record for `name` (a zone, or the command for any).
    pub fn dns_01_covers(&self, name: &str) -> bool {
        self.dns_command.is_some() || self.dns_update_for(name).is_some()
    }
}

/// `[acme.on_demand]`: certificates ordered at the first handshake for a name, for the
/// names an `ask` service or the `allow` patterns permit, within bounds a flood of
/// random names cannot exceed.
#[derive(Clone, Debug, PartialEq)]
pub struct OnDemand {
    /// `GET <ask>?domain=<name>`: a 2xx answer permits the name.
    pub ask: Option<AskUrl>,
    /// Exact names, or `*.parent` for any one label under `parent`.
    pub allow: Vec<String>,
    /// At most this many orders per `rate_period`.
    pub rate_limit: u32,
    pub rate_period: Duration,
    /// At most this many on-demand certificates in the store.
    pub max_certificates: usize,
    /// A refused or failed name is not asked or ordered again for this long.
    pub failure_hold: Duration,
}

/// A plain `http://host:port/path` (the ask service runs beside the proxy).
#[derive(Clone, Debug, PartialEq)]
pub struct AskUrl {
    pub authority: String,
    pub path_and_query: String,
}

impl AskUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?}: must be an http:// URL (a service beside the proxy; https is not supported)")
        })?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || path.contains('#') {
            return Err(format!("{url:?}: expected http://host:port/path"));
        }
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
        Ok(Self { authority: authority.to_owned(), path_and_query: path })
    }

    /// The request path for `name` (a checked DNS name: nothing to escape).
    pub fn path_for(&self, name: &str) -> String {
        let sep = if self.path_and_query.contains('?') { '&' } else { '?' };
        format!("{}{sep}domain={name}", self.path_and_query)
    }
}

impl OnDemand {
    /// Whether an `allow` pattern covers `name` (lowercase, checked).
    pub fn allows(&self, name: &str) -> bool {
        self.allow.iter().any(|p| match p.strip_prefix("*.") {
            Some(parent) => name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => p == name,
        })
    }
}

/// How the CA validates control of a name (RFC 8555 §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// A token over plain HTTP on port 80.
    Http01,
    /// A challenge certificate on the TLS listeners (RFC 8737): no port 80 needed.
    TlsAlpn01,
    /// A TXT record `_acme-challenge.<name>`, placed by `[acme] dns_command`: the only
    /// one that validates wildcard names.
    Dns01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::Dns01 => "dns-01",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "http-01" => Ok(Self::Http01),
            "tls-alpn-01" => Ok(Self::TlsAlpn01),
            "dns-01" => Ok(Self::Dns01),
            other => Err(format!("{other:?}: one of http-01, tls-alpn-01, dns-01")),
        }
    }
}

/// One `[[acme.certificate]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AcmeCertificate {
    /// Lowercase FQDNs, the first one the certificate's name by default.
    pub hostnames: Vec<String>,
    pub name: Option<String>,
    pub key_type: Option<crate::pki::KeyType>,
    /// Listeners it is assigned to when issued; `None`: none (served by auto-selection).
    pub listeners: Option<Vec<String>>,
    /// `None`: [`Acme::default_challenge`].
    pub challenge: Option<Challenge>,
}

/// Checks an ACME hostname: a fully qualified DNS name HTTP-01 can validate.
pub fn check_acme_hostname(h: &str, wildcard_ok: bool) -> Result<String, String> {
    if h.starts_with("*.") && !wildcard_ok {
        return Err(
            "a wildcard name needs challenge = \"dns-01\" (HTTP-01 and TLS-ALPN-01 cannot validate wildcards)".into()
        );
    }
    if h.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address, not a DNS name".into());
    }
    crate::pki::validate_dns_pattern(h)?;
    let h = h.trim_end_matches('.').to_ascii_lowercase();
    if !h.contains('.') {
        return Err("not a fully qualified domain name (needs a dot, e.g. www.example.com)".into());
    }
    Ok(h)
}

/// `[alerts]`: where renewal failures are reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Alerts {
    /// Run with `sh -c`, the details in PORTCULLIS_ALERT_* environment variables.
    pub command: Option<String>,
    pub smtp: Option<Smtp>,
}

/// How the SMTP connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    StartTls,
    Tls,
    None,
}

/// `[alerts.smtp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_bundle: Option<PathBuf>,
    pub from: String,
    pub to: Vec<String>,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    pub store_dir: PathBuf,
    pub admin_listen: SocketAddr,
    pub worker_threads: usize,
    pub drain_timeout: Duration,
    /// Plain-HTTP listeners that redirect to https.
    pub http_listen: Vec<SocketAddr>,
    /// The port of the https URL they redirect to (443: none in the URL).
    pub redirect_port: u16,
    /// `[admin] certificate_series`: at most this many per-certificate series in one
    /// `/metrics` scrape (the soonest to expire); a histogram counts them all.
    pub certificate_series: usize,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub acme: Option<Acme>,
    pub alerts: Alerts,
    /// `[jobs] dir`: admin jobs by file drop.
    pub jobs_dir: Option<PathBuf>,
    /// `[cluster]`: etcd is the source of truth and the store a materialised copy.
    pub cluster: Option<Cluster>,
}

/// `[cluster]` (docs/CLUSTER.md).
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// `http://host:port` or `https://host:port`, one per etcd member.
    pub endpoints: Vec<String>,
    /// Every key of this cluster lives under it; one etcd can hold several clusters.
    pub prefix: String,
    /// This node's name: unique in the cluster (defaults to the host name).
    pub node: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub secret_key_file: PathBuf,
    /// Older cluster keys, kept to read values sealed before a rotation.
    pub previous_secret_key_files: Vec<PathBuf>,
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
            redirect_port: 443,
            certificate_series: DEFAULT_CERTIFICATE_SERIES,
            listeners: vec![Listener::new("default", vec![DEFAULT_LISTEN.parse().expect("valid default")])],
            routes: vec![Route {
                listener: "default".into(),
                hosts: vec![HostPattern::Any],
                handler_type: "static".into(),
                handler: welcome,
                origin: "built-in route".into(),
                label: "built-in".into(),
            }],
            acme: None,
            alerts: Alerts::default(),
            jobs_dir: None,
            cluster: None,
        }
    }

    /// Loads `path`, or the built-in defaults when `None`; the first problem stops it.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let (config, mut errors) = Self::load_all(path);
        if errors.is_empty() { Ok(config) } else { Err(errors.swap_remove(0)) }
    }

    /// Loads `path` and returns every problem found (`check-config`), each naming file,
    /// line and key. The configuration returned is only meaningful without problems;
    /// with them it is what could be read (its `[admin] listen`, say, to find a daemon).
    pub fn load_all(path: Option<&Path>) -> (Self, Vec<Error>) {
        let Some(path) = path else { return (Self::builtin(), Vec::new()) };
        let mut config = Self::builtin();
        config.source = Some(path.to_owned());
        let mut raw = match parse_file(path) {
            Ok(raw) => raw,
            Err(e) => return (config, vec![e]),
        };
        let mut errors = Vec::new();
        // Drop-in fragments: conf.d/*.toml beside the main file, merged in name order.
        // A section in a fragment replaces the main file's; listeners and routes add up.
        let mut listener_files: Vec<(PathBuf, usize)> = (0..raw.listener.len()).map(|i| (path.to_owned(), i)).collect();
        let mut route_files: Vec<(PathBuf, usize)> = (0..raw.route.len()).map(|i| (path.to_owned(), i)).collect();
        // Which file each replaced section came from, for error messages.
        let mut section_files: std::collections::HashMap<&'static str, PathBuf> = std::collections::HashMap::new();
        let fragment_paths = fragments(path).unwrap_or_else(|e| {
            errors.push(e);
            Vec::new()
        });
        for fragment in fragment_paths {
            let f = match parse_file(&fragment) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            macro_rules! replace {
                ($($field:ident),*) => { $( if f.$field.is_some() {
                    raw.$field = f.$field;
                    section_files.insert(stringify!($field), fragment.clone());
                } )* };
            }
            replace!(store, admin, runtime, http, acme, alerts, jobs, cluster);
            listener_files.extend((0..f.listener.len()).map(|i| (fragment.clone(), i)));
            route_files.extend((0..f.route.len()).map(|i| (fragment.clone(), i)));
            raw.listener.extend(f.listener);
            raw.route.extend(f.route);
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |key: String, message: String| {
            let section = key.split(['.', '[']).next().unwrap_or_default();
            let path = section_files.get(section).cloned().unwrap_or_else(|| path.to_owned());
            Error::Invalid { path, line: None, key, message }
        };
        if let Some(store) = raw.store {
            if store.dir.trim().is_empty() {
                errors.push(invalid("store.dir".into(), "must not be empty".into()));
            } else {
                config.store_dir = base.join(store.dir);
            }
        }
        if let Some(admin) = raw.admin {
            match admin.listen.parse() {
                Ok(a) => config.admin_listen = a,
                Err(_) => {
                    errors.push(invalid("admin.listen".into(), format!("{:?} is not an address:port", admin.listen)))
                }
            }
            match admin.certificate_series {
                None => {}
                Some(n @ 1..=1_000_000) => config.certificate_series = n as usize,
                Some(_) => errors.push(invalid("admin.certificate_series".into(), "must be 1 to 1000000".into())),
            }
        }
        if let Some(rt) = raw.runtime {
            config.worker_threads = rt.worker_threads.unwrap_or(0);
            if let Some(secs) = rt.drain_timeout_secs {
                config.drain_timeout = Duration::from_secs(secs);
            }
        }
        if let Some(http) = raw.http {
            config.http_listen.clear();
            for a in &http.listen {
                match a.parse() {
                    Ok(addr) => config.http_listen.push(addr),
                    Err(_) => errors.push(invalid("http.listen".into(), format!("{a:?} is not an address:port"))),
                }
            }
            config.redirect_port = match http.redirect_port {
                Some(0) => {
                    errors.push(invalid("http.redirect_port".into(), "must be a port, 1 to 65535".into()));
                    443
                }
                Some(port) => port,
                None => 443,
            };
        }
        let on_demand_declared = raw.acme.as_ref().is_some_and(|a| a.on_demand.is_some());
        if let Some(acme) = raw.acme {
            config.acme = acme_config(acme, !config.http_listen.is_empty(), base, &invalid, &mut errors);
        }
        if let Some(alerts) = raw.alerts
            && let Some(a) = alerts_config(alerts, base, &invalid, &mut errors)
        {
            config.alerts = a;
        }
        if let Some(c) = raw.cluster {
            let before = errors.len();
            if c.etcd.is_empty() {
                errors.push(invalid("cluster.etcd".into(), "needs at least one endpoint".into()));
            }
            for e in &c.etcd {
                if !(e.starts_with("http://") || e.starts_with("https://")) || e.parse::<http::Uri>().is_err() {
                    errors.push(invalid("cluster.etcd".into(), format!("{e:?} is not an http:// or https:// URL")));
                }
            }
            let prefix = c.prefix.unwrap_or_else(|| "/portcullis".into());
            if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.len() > 200 {
                errors.push(invalid(
                    "cluster.prefix".into(),
                    format!("{prefix:?}: starts with '/', does not end with one, at most 200 bytes"),
                ));
            }
            let node = c.node.or_else(crate::hostname).unwrap_or_default();
            if node.is_empty()
                || node.len() > 64
                || !node.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                errors.push(invalid("cluster.node".into(), format!("{node:?}: 1-64 of A-Z a-z 0-9 - _ .")));
            }
            if c.cert_file.is_some() != c.key_file.is_some() {
                errors.push(invalid("cluster.cert_file".into(), "cert_file and key_file go together".into()));
            }
            if c.username.is_some() != c.password_file.is_some() {
                errors.push(invalid("cluster.username".into(), "username and password_file go together".into()));
            }
            if c.secret_key_file.trim().is_empty() {
                errors.push(invalid("cluster.secret_key_file".into(), "must not be empty".into()));
            }
            if errors.len() == before {
                let path = |p: Option<String>| p.map(|p| base.join(p));
                config.cluster = Some(Cluster {
                    endpoints: c.etcd,
                    prefix,
                    node,
                    ca_file: path(c.ca_file),
                    cert_file: path(c.cert_file),
                    key_file: path(c.key_file),
                    username: c.username,
                    password_file: path(c.password_file),
                    secret_key_file: base.join(c.secret_key_file),
                    previous_secret_key_files: c.previous_secret_key_files.iter().map(|p| base.join(p)).collect(),
                });
            }
        }
        if let Some(jobs) = raw.jobs {
            if jobs.dir.trim().is_empty() {
                errors.push(invalid("jobs.dir".into(), "must not be empty".into()));
            } else {
                config.jobs_dir = Some(base.join(jobs.dir));
            }
        }
        if !raw.listener.is_empty() {
            config.listeners.clear();
        }
        if !raw.listener.is_empty() || !raw.route.is_empty() {
            // Configured routes replace the built-in welcome page.
            config.routes.clear();
        }
        for (i, l) in raw.listener.into_iter().enumerate() {
            let (file, j) = &listener_files[i];
            let invalid =
                |key: String, message: String| Error::Invalid { path: file.clone(), line: None, key, message };
            let key = |k: &str| format!("listener[{j}].{k}");
            // Every field is checked; a listener with a bad field is still kept (with the
            // default for that field) so that its routes are not reported as well.
            let mut err = |e: Error| errors.push(e);
            if l.name.is_empty() || !l.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                err(invalid(key("name"), format!("{:?}: use letters, digits, - and _", l.name)));
                continue;
            }
            if config.listeners.iter().any(|o| o.name == l.name) {
                err(invalid(key("name"), format!("{:?} is used by another listener", l.name)));
                continue;
            }
            if l.bind.is_empty() {
                err(invalid(key("bind"), "needs at least one address:port".into()));
            }
            let mut bind = Vec::new();
            for b in &l.bind {
                match b.parse() {
                    Ok(a) => bind.push(a),
                    Err(_) => err(invalid(key("bind"), format!("{b:?} is not an address:port"))),
                }
            }
            let mut listener = Listener::new(&l.name, bind);
            let mut policy = |k: &str, v: Option<String>| match v.as_deref() {
                None | Some("default") => SniPolicy::Default,
                Some("reject") => SniPolicy::Reject,
                Some(other) => {
                    err(invalid(key(k), format!("{other:?}: expected \"default\" or \"reject\"")));
                    SniPolicy::Default
                }
            };
            listener.no_sni = policy("no_sni", l.no_sni);
            listener.unknown_sni = policy("unknown_sni", l.unknown_sni);
            match l.max_connections {
                Some(0) => err(invalid(key("max_connections"), "must be at least 1".into())),
                Some(n) => listener.max_connections = n,
                None => {}
            }
            let mut secs = |k: &str, v: Option<u64>, d: Duration| match v {
                Some(0) => {
                    err(invalid(key(k), "must be at least 1 second".into()));
                    d
                }
                Some(s) => Duration::from_secs(s),
                None => d,
            };
            listener.handshake_timeout =
                secs("handshake_timeout_secs", l.handshake_timeout_secs, listener.handshake_timeout);
            listener.idle_timeout = secs("idle_timeout_secs", l.idle_timeout_secs, listener.idle_timeout);
            listener.write_timeout = secs("write_timeout_secs", l.write_timeout_secs, listener.write_timeout);
            match l.max_header_bytes {
                Some(n) if n < 1024 => err(invalid(key("max_header_bytes"), "must be at least 1024".into())),
                Some(n) => listener.max_header_bytes = n,
                None => {}
            }
            listener.send_root = l.send_root.unwrap_or(false);
            listener.on_demand = l.on_demand.unwrap_or(false);
            if listener.on_demand && !on_demand_declared {
                err(invalid(
                    key("on_demand"),
                    "needs [acme.on_demand] (which names may be ordered, and how many)".into(),
                ));
            }
            config.listeners.push(listener);
        }
        let mut texts = FileTexts::default();
        for (i, r) in raw.route.into_iter().enumerate() {
            let (file, j) = &route_files[i];
            let invalid =
                |key: String, message: String| Error::Invalid { path: file.clone(), line: None, key, message };
            let key = |k: &str| format!("route[{j}].{k}");
            let before = errors.len();
            let listener = match (r.listener, config.listeners.len()) {
                (Some(name), _) => name,
                (None, 1) => config.listeners[0].name.clone(),
                (None, _) => {
                    errors.push(invalid(key("listener"), "required when there are several listeners".into()));
                    String::new()
                }
            };
            if !listener.is_empty() && !config.listeners.iter().any(|l| l.name == listener) {
                errors.push(invalid(key("listener"), format!("{listener:?} is not a [[listener]] name")));
            }
            if r.hosts.is_empty() {
                errors.push(invalid(key("hosts"), "needs at least one host pattern (\"*\" for any)".into()));
            }
            let mut hosts = Vec::new();
            for h in &r.hosts {
                match HostPattern::parse(h) {
                    Ok(p) => hosts.push(p),
                    Err(e) => errors.push(invalid(key("hosts"), format!("{h:?}: {e}"))),
                }
            }
            let handler_type = match r.handler.get("type") {
                Some(toml::Value::String(t)) => t.clone(),
                _ => {
                    errors.push(invalid(key("handler.type"), "missing; one of the handler types is required".into()));
                    String::new()
                }
            };
            if errors.len() > before {
                continue;
            }
            let line = texts.line_of(file, &format!("route[{j}]")).map_or(String::new(), |l| format!(":{l}"));
            config.routes.push(Route {
                listener,
                hosts,
                handler_type,
                handler: r.handler,
                origin: format!("{}{line}: route[{j}]", file.display()),
                label: format!("route[{i}]"),
            });
        }
        if let Some(acme) = &config.acme {
            for (i, c) in acme.certificates.iter().enumerate() {
                for name in c.listeners.iter().flatten() {
                    if !config.listeners.iter().any(|l| &l.name == name) {
                        errors.push(invalid(
                            format!("acme.certificate[{i}].listeners"),
                            format!("{name:?} is not a [[listener]] name"),
                        ));
                    }
                }
            }
        }
        for e in &mut errors {
            if let Error::Invalid { path, line, key, .. } = e {
                *line = texts.line_of(path, key);
            }
        }
        (config, errors)
    }
}

/// The configuration files' texts, read again only to point an error at its line.
#[derive(Default)]
struct FileTexts(std::collections::HashMap<PathBuf, Option<String>>);

impl FileTexts {
    /// The line of `key` ("listener[1].bind", "acme.certificate[0].hostnames") in `path`,
    /// or of the nearest enclosing table when the key itself is not written there.
    fn line_of(&mut self, path: &Path, key: &str) -> Option<usize> {
        let text = self.0.entry(path.to_owned()).or_insert_with(|| read_config(path).ok()).as_deref()?;
        let doc = toml::de::DeTable::parse(text).ok()?;
        let mut table = doc.get_ref();
        let mut offset = None;
        for segment in key.split('.') {
            let (name, index) = match segment.split_once('[') {
                Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (segment, None),
            };
            let Some((k, v)) = table.get_key_value(name) else { break };
            offset = Some(k.span().start);
            let value = match (v.get_ref(), index) {
                (toml::de::DeValue::Array(items), Some(i)) => match items.get(i) {
                    Some(item) => {
                        offset = Some(item.span().start);
                        item
                    }
                    None => break,
                },
                _ => v,
            };
            match value.get_ref() {
                toml::de::DeValue::Table(t) => table = t,
                _ => break,
            }
        }
        offset.map(|o| line_col(text, o).0)
    }
}

impl Config {
    /// Refuses names that are not configured listeners, listing those that are.
    pub fn check_listeners(&self, names: &[String]) -> Result<(), String> {
        for name in names {
            if !self.listeners.iter().any(|l| &l.name == name) {
                let have: Vec<&str> = self.listeners.iter().map(|l| l.name.as_str()).collect();
                return Err(format!("{name:?} is not a configured listener (configured: {})", have.join(", ")));
            }
        }
        Ok(())
    }

    /// Plain-HTTP addresses: `[http] listen` and `[acme] http_listen`, each once.
    pub fn plain_http(&self) -> Vec<SocketAddr> {
        let mut all = self.http_listen.clone();
        for a in self.acme.iter().flat_map(|a| &a.http_listen) {
            if !all.contains(a) {
                all.push(*a);
            }
        }
        all
    }
}

/// `[acme]`, checked field by field: every problem goes into `errors`, and `None` is
/// returned if there was any.
fn acme_config(
    a: file::Acme,
    has_http: bool,
    base: &Path,
    invalid: &dyn Fn(String, String) -> Error,
    errors: &mut Vec<Error>,
) -> Option<Acme> {
    let before = errors.len();
    let directory = a.directory.unwrap_or_else(|| LETS_ENCRYPT.to_owned());
    if !directory.starts_with("https://") {
        errors.push(invalid("acme.directory".into(), format!("{directory:?}: must be an https:// URL")));
    }
    if a.agree_tos != Some(true) {
        errors.push(invalid(
            "acme.agree_tos".into(),
            format!("must be set to true to accept the terms of service of {directory} (read them first)"),
        ));
    }
    for c in &a.contact {
        if !c.starts_with("mailto:") || c.len() < 10 || !c.contains('@') {
            errors.push(invalid("acme.contact".into(), format!("{c:?}: expected \"mailto:user@example.com\"")));
        }
    }
    let mut days = |key: &str, v: Option<f64>, d: f64| match v {
        None => d,
        Some(x) if x.is_finite() && x > 0.0 && x < 3650.0 => x,
        Some(x) => {
            errors.push(invalid(format!("acme.{key}"), format!("{x}: expected a number of days above 0")));
            d
        }
    };
    let renew = days("renew_before_days", a.renew_before_days, 30.0);
    let alert = days("alert_before_days", a.alert_before_days, 25.0 * renew / 30.0);
    if alert > renew {
        errors.push(invalid(
            "acme.alert_before_days".into(),
            format!("{alert} is more than renew_before_days ({renew}): alerts come after renewal starts"),
        ));
    }
    let mut key_type = |key: String, v: Option<String>| match v.map(|k| (k.parse(), k)) {
        None => None,
        Some((Ok(t), _)) => Some(t),
        Some((Err(reason), k)) => {
            errors.push(invalid(key, format!("{k:?}: {reason}")));
            None
        }
    };
    let default_key = key_type("acme.key".into(), a.key).unwrap_or(crate::pki::KeyType::EcdsaP256);
    let mut certificates: Vec<AcmeCertificate> = Vec::new();
    let mut certificate_errors = Vec::new();
    for (i, c) in a.certificate.into_iter().enumerate() {
        let key = |k: &str| format!("acme.certificate[{i}].{k}");
        let own_key = key_type(key("key"), c.key);
        let challenge = match c.challenge.as_deref().map(Challenge::parse) {
            None => None,
            Some(Ok(ch)) => Some(ch),
            Some(Err(e)) => {
                certificate_errors.push(invalid(key("challenge"), e));
                None
            }
        };
        if challenge == Some(Challenge::Dns01)
            && a.dns_command.as_deref().is_none_or(|c| c.trim().is_empty())
            && a.dns_update.is_empty()
        {
            certificate_errors.push(invalid(
                key("challenge"),
                "dns-01 needs [[acme.dns_update]] (RFC 2136) or [acme] dns_command to place the TXT record".into(),
            ));
        }
        if c.hostnames.is_empty() {
            certificate_errors.push(invalid(key("hostnames"), "needs at least one hostname".into()));
            continue;
        }
        let mut hostnames = Vec::new();
        for h in &c.hostnames {
            match check_acme_hostname(h, challenge == Some(Challenge::Dns01)) {
                Ok(h) => hostnames.push(h),
                Err(e) => certificate_errors.push(invalid(key("hostnames"), format!("{h:?}: {e}"))),
            }
        }
        if certificates.iter().any(|o| same_names(&o.hostnames, &hostnames)) {
            certificate_errors.push(invalid(key("hostnames"), "the same hostnames are listed twice".into()));
        }
        certificates.push(AcmeCertificate {
            hostnames,
            name: c.name,
            key_type: own_key,
            listeners: c.listeners,
            challenge,
        });
    }
    errors.append(&mut certificate_errors);
    let mut http_listen = Vec::new();
    match a.http_listen {
        None => http_listen.push(SocketAddr::from(([0, 0, 0, 0], 80))),
        Some(v) => {
            for s in v.into_vec() {
                match s.parse() {
                    Ok(addr) => http_listen.push(addr),
                    Err(_) => errors.push(invalid("acme.http_listen".into(), format!("{s:?} is not an address:port"))),
                }
            }
        }
    }
    let eab = match (a.eab_kid, a.eab_hmac_key_file) {
        (Some(kid), Some(file)) => Some((kid, base.join(file))),
        (None, None) => None,
        _ => {
            errors.push(invalid("acme.eab_kid".into(), "eab_kid and eab_hmac_key_file go together".into()));
            None
        }
    };
    let default_challenge = if http_listen.is_empty() && !has_http { Challenge::TlsAlpn01 } else { Challenge::Http01 };
    let dns_wait = a.dns_wait_secs.unwrap_or(0);
    if dns_wait > 3600 {
        errors.push(invalid("acme.dns_wait_secs".into(), format!("{dns_wait}: at most 3600 seconds")));
    }
    let dns_command = a.dns_command.filter(|c| !c.trim().is_empty());
    let on_demand = a.on_demand.and_then(|o| on_demand_config(o, invalid, errors));
    let mut dns_updates: Vec<DnsUpdate> = Vec::new();
    for (i, u) in a.dns_update.into_iter().enumerate() {
        if let Some(d) = dns_update_config(u, i, base, invalid, errors) {
            if dns_updates.iter().any(|o| o.zone == d.zone) {
                errors.push(invalid(format!("acme.dns_update[{i}].zone"), format!("{:?} is listed twice", d.zone)));
            }
            dns_updates.push(d);
        }
    }
    (errors.len() == before).then(|| Acme {
        on_demand,
        dns_updates,
        default_challenge,
        dns_command,
        dns_wait: Duration::from_secs(dns_wait),
        directory,
        contact: a.contact,
        ca_bundle: a.ca_bundle.map(|p| base.join(p)),
        http_listen,
        renew_before: Duration::from_secs_f64(renew * 86_400.0),
        alert_before: Duration::from_secs_f64(alert * 86_400.0),
        key_type: default_key,
        reuse_key: a.reuse_key.unwrap_or(false),
        eab,
        certificates,
    })
}

/// One `[[acme.dns_update]]`, checked field by field.
fn dns_update_config(
    u: file::DnsUpdate,
    i: usize,
    base: &Path,
    invalid: &dyn Fn(String, String) -> Error,
    errors: &mut Vec<Error>,
) -> Option<DnsUpdate> {
    let before = errors.len();
    let key = |k: &str| format!("acme.dns_update[{i}].{k}");
    let zone = u.zone.trim_end_matches('.').to_ascii_lowercase();
    if let Err(e) = crate::pki::validate_dns_pattern(&zone)
        .and_then(|()| if zone.contains('*') { Err("a zone name, not a wildcard".into()) } else { Ok(()) })
    {
        errors.push(invalid(key("zone"), format!("{:?}: {e}", u.zone)));
    }
    let addr = |k: &str, v: &str, errors: &mut Vec<Error>| match v.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(invalid(key(k), format!("{v:?} is not an address:port (e.g. 192.0.2.53:53)")));
            None
        }
    };
    let server = addr("server", &u.server, errors);
    let mut check_servers = Vec::new();
    for c in u.check_servers.iter().flatten() {
        check_servers.extend(addr("check_servers", c, errors));
    }
    if u.key_name.trim().is_empty() || crate::pki::validate_dns_pattern(u.key_name.trim_end_matches('.')).is_err() {
        errors.push(invalid(key("key_name"), format!("{:?}: a TSIG key name (e.g. acme-update)", u.key_name)));
    }
    let algorithm = u.algorithm.unwrap_or_else(|| "hmac-sha256".into()).to_ascii_lowercase();
    if !["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&algorithm.as_str()) {
        errors.push(invalid(key("algorithm"), format!("{algorithm:?}: one of hmac-sha256, hmac-sha384, hmac-sha512")));
    }
    if u.secret_file.trim().is_empty() {
        errors.push(invalid(key("secret_file"), "must name the file holding the base64 TSIG secret".into()));
    }
    let timeout = u.propagation_timeout_secs.unwrap_or(120);
    if !(1..=3600).contains(&timeout) {
        errors.push(invalid(key("propagation_timeout_secs"), format!("{timeout}: expected 1 to 3600")));
    }
    (errors.len() == before).then(|| DnsUpdate {
        zone,
        server: server.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 53))),
        key_name: u.key_name.trim_end_matches('.').to_owned(),
        algorithm,
        secret_file: base.join(u.secret_file),
        check_servers,
        propagation_timeout: Duration::from_secs(timeout),
    })
}

/// `[acme.on_demand]`, checked field by field.
fn on_demand_config(
    o: file::OnDemand,
    invalid: &dyn Fn(String, String) -> Error,
    errors: &mut Vec<Error>,
) -> Option<OnDemand> {
    let before = errors.len();
    let ask = match o.ask.as_deref().map(AskUrl::parse) {
        None => None,
        Some(Ok(u)) => Some(u),
        Some(Err(e)) => {
            errors.push(invalid("acme.on_demand.ask".into(), e));
            None
        }
    };
    let mut allow = Vec::new();
    for p in &o.allow {
        match check_acme_hostname(p, true) {
            Ok(p) if p.starts_with("*.") && p[2..].contains('*') => {
                errors.push(invalid("acme.on_demand.allow".into(), format!("{p:?}: one leading * only")))
            }
            Ok(p) => allow.push(p),
            Err(e) => errors.push(invalid("acme.on_demand.allow".into(), format!("{p:?}: {e}"))),
        }
    }
    if o.ask.is_none() && o.allow.is_empty() {
        errors.push(invalid(
            "acme.on_demand".into(),
            "needs ask (a URL that answers 2xx for names to certify) or allow (name patterns), or both".into(),
        ));
    }
    let mut bounded = |key: &str, v: Option<u64>, default: u64, max: u64| match v {
        None => default,
        Some(n) if (1..=max).contains(&n) => n,
        Some(n) => {
            errors.push(invalid(format!("acme.on_demand.{key}"), format!("{n}: expected 1 to {max}")));
            default
        }
    };
    let rate_limit = bounded("rate_limit", o.rate_limit.map(u64::from), 10, 10_000) as u32;
    let rate_period = bounded("rate_period_secs", o.rate_period_secs, 60, 86_400);
    let max_certificates = bounded("max_certificates", o.max_certificates.map(|n| n as u64), 1000, 1_000_000) as usize;
    let failure_hold = bounded("failure_hold_secs", o.failure_hold_secs, 600, 7 * 86_400);
    (errors.len() == before).then(|| OnDemand {
        ask,
        allow,
        rate_limit,
        rate_period: Duration::from_secs(rate_period),
        max_certificates,
        failure_hold: Duration::from_secs(failure_hold),
    })
}

/// Whether two hostname lists name the same set.
pub fn same_names(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut b: Vec<&str> = b.iter().map(String::as_str).collect();
    a.sort_unstable();
    a.dedup();
    b.sort_unstable();
    b.dedup();
    a == b
}

/// `[alerts]`, checked field by field like [`acme_config`].
fn alerts_config(
    a: file::Alerts,
    base: &Path,
    invalid: &dyn Fn(String, String) -> Error,
    errors: &mut Vec<Error>,
) -> Option<Alerts> {
    let before = errors.len();
    let smtp = a.smtp.map(|s| {
        let security = match s.security.as_deref() {
            None | Some("starttls") => SmtpSecurity::StartTls,
            Some("tls") => SmtpSecurity::Tls,
            Some("none") => SmtpSecurity::None,
            Some(other) => {
                errors.push(invalid(
                    "alerts.smtp.security".into(),
                    format!("{other:?}: expected \"starttls\", \"tls\" or \"none\""),
                ));
                SmtpSecurity::StartTls
            }
        };
        if s.host.trim().is_empty() {
            errors.push(invalid("alerts.smtp.host".into(), "must not be empty".into()));
        }
        let mut mailbox = |key: &str, v: &str| {
            if let Err(e) = v.parse::<lettre::message::Mailbox>() {
                errors.push(invalid(format!("alerts.smtp.{key}"), format!("{v:?}: {e}")));
            }
        };
        mailbox("from", &s.from);
        for t in &s.to {
            mailbox("to", t);
        }
        if s.to.is_empty() {
            errors.push(invalid("alerts.smtp.to".into(), "needs at least one address".into()));
        }
        if s.username.is_some() != s.password_file.is_some() {
            errors.push(invalid("alerts.smtp.username".into(), "username and password_file go together".into()));
        }
        let port = s.port.unwrap_or(match security {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        });
        Smtp {
            host: s.host,
            port,
            security,
            username: s.username,
            password_file: s.password_file.map(|p| base.join(p)),
            ca_bundle: s.ca_bundle.map(|p| base.join(p)),
            from: s.from,
            to: s.to,
        }
    });
    (errors.len() == before).then(|| Alerts { command: a.alert_command.filter(|c| !c.trim().is_empty()), smtp })
}

/// A configuration file: an administrator's, so a link is followed (`/etc` is often
/// managed that way), but it must end at a regular file of bounded size.
fn read_config(path: &Path) -> std::io::Result<String> {
    crate::input::read_text(path, crate::input::MAX_TOML, crate::input::Links::Follow)
}

/// Parses one file, naming it, the line and the column on error.
fn parse_file(path: &Path) -> Result<file::FileConfig, Error> {
    let text = read_config(path).map_err(|error| Error::Read { path: path.to_owned(), error })?;
    if text.trim().is_empty() {
        return Err(Error::Empty { path: path.to_owned() });
    }
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
        Err(error) => return Err(Error::Read { path: dir, error }),
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
        assert!(err.contains("30-bad.toml:5: route[0].listener"), "{err}");
        fs::write(dir.path().join("conf.d/30-bad.toml"), "[[route]\n").unwrap();
        let err = Config::load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains("30-bad.toml:1:"), "{err}");
        fs::remove_file(dir.path().join("conf.d/30-bad.toml")).unwrap();
        // A section from a fragment: its errors name the fragment.
        fs::write(dir.path().join("conf.d/40-acme.toml"), "[acme]\ncontact = [\"mailto:ops@example.com\"]\n").unwrap();
        let err = Config::load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains("40-acme.toml:1: acme.agree_tos: must be set to true"), "{err}");
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
