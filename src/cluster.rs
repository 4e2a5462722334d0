//! The cluster (docs/CLUSTER.md): etcd is the source of truth for the certificate store
//! and each node's store directory is a materialised copy of it, so the data plane and
//! the file watcher work exactly as on a single node.
//!
//! Keys under `[cluster] prefix` (P):
//!
//! ```text
//! P/meta               the cluster: format and the id of the key values are sealed with
//! P/store/<file>       every store file by its path in the store; private keys sealed
//! P/challenges/<tok>   HTTP-01 key authorizations, tied to the publisher's lease
//! P/nodes/<node>       each node's applied revision and last error, tied to its lease
//! P/renewer            the elected renewer ("<node> <lease>"), tied to its lease
//! P/changed            rewritten by every store write: its revision is the last change
//! P/orders/<id>        an order in progress (URL and key, sealed), for a successor
//! ```
//!
//! Every write (CLI, job, renewer) runs on a scratch copy materialised from one read at
//! revision R and commits what changed in one transaction guarded by each changed key's
//! revision at R (and, for the renewer, by still holding the renewer key): a concurrent
//! change or a deposed renewer makes it fail whole. Every call has a short deadline; a
//! timed-out write has an unknown outcome, so nothing acts on it before reading again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};

use crate::config;
use crate::seal::{self, ClusterKey, Keyring};
use crate::store::mirror::{self, FileImage, Stamp};

/// Deadline of every etcd call: a cut-off node fails fast instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The renewer's and each node's lease: a renewer paused or dead this long is replaced.
pub const LEASE_TTL: i64 = 10;
/// How long the renewer waits for every live node to have a challenge token.
pub const TOKEN_WAIT: Duration = Duration::from_secs(2);
/// The cluster format this version writes in `P/meta`.
const FORMAT: u32 = 1;
/// Largest value accepted from etcd (etcd's own default request limit is 1.5 MiB).
const MAX_VALUE: usize = 2 << 20;

/// Cluster errors; each names etcd (and its endpoints) or the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd ({endpoints}): {message}")]
    Etcd { endpoints: String, message: String },
    #[error("etcd ({endpoints}): no answer within {secs} s (no quorum, or unreachable); {outcome}", secs = TIMEOUT.as_secs())]
    Timeout { endpoints: String, outcome: &'static str },
    #[error("etcd ({endpoints}): {key} changed on another node while this ran; nothing was written, run it again")]
    Conflict { endpoints: String, key: String },
    #[error("etcd ({endpoints}): this node is no longer the renewer (its lease ended); its writes are refused")]
    Fenced { endpoints: String },
    #[error("etcd ({endpoints}): prefix {prefix} holds no cluster; `portcullis cluster init` creates one from a store")]
    NoCluster { endpoints: String, prefix: String },
    #[error(
        "etcd ({endpoints}): prefix {prefix} is not empty ({count} keys); `cluster init` only fills an empty prefix (`portcullis cluster join` materialises an existing cluster)"
    )]
    NotEmpty { endpoints: String, prefix: String, count: i64 },
    #[error(
        "{}: cluster key {have} cannot open this cluster's secrets, which are sealed with key {want}; use the cluster's secret_key_file",
        file.display()
    )]
    WrongKey { file: PathBuf, have: String, want: String },
    #[error("etcd ({endpoints}): {key}: {reason}")]
    BadValue { endpoints: String, key: String, reason: String },
    #[error(transparent)]
    Seal(#[from] seal::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
}

/// `P/meta`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub format: u32,
    /// Id of the cluster key private values are sealed with.
    pub key_id: String,
    pub created_by: String,
}

/// `P/nodes/<node>`: what each node reports about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub version: String,
    /// The etcd revision its store copy reflects.
    pub applied: i64,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The store as etcd holds it at one revision.
#[derive(Clone, Debug, Default)]
pub struct Image {
    pub revision: i64,
    pub files: BTreeMap<String, FileImage>,
    /// Each file's mod revision: what a write guards on.
    pub mods: BTreeMap<String, i64>,
    /// `P/changed`'s mod revision at this read: the store's last write.
    pub changed: i64,
}

/// The renewer's proof of office: written only while `P/renewer` still holds `token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub token: String,
}

/// A connected cluster client (cheap to clone).
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    cfg: Arc<config::Cluster>,
    keys: Arc<Keyring>,
}

impl Cluster {
    /// Loads the cluster key and connects (lazily: an unreachable etcd fails the first
    /// call, within [`TIMEOUT`], not this one).
    pub async fn connect(cfg: &config::Cluster) -> Result<Self, Error> {
        let key = ClusterKey::load(&cfg.secret_key_file)?;
        let older = cfg.previous_secret_key_files.iter().map(|p| ClusterKey::load(p)).collect::<Result<Vec<_>, _>>()?;
        let mut options = ConnectOptions::new()
            .with_timeout(TIMEOUT)
            .with_connect_timeout(TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), TIMEOUT)
            .with_require_leader(true);
        if let (Some(user), Some(file)) = (&cfg.username, &cfg.password_file) {
            let password = crate::input::read_text(file, crate::input::MAX_PASSWORD, crate::input::Links::Follow)
                .map_err(|error| Error::Io { path: file.clone(), error })?;
            options = options.with_user(user.clone(), password.trim_end_matches(['\r', '\n']).to_owned());
        }
        if cfg.ca_file.is_some() || cfg.cert_file.is_some() {
            let read = |p: &PathBuf| {
                crate::input::read(p, crate::input::MAX_PEM, crate::input::Links::Follow)
                    .map_err(|error| Error::Io { path: p.clone(), error })
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &cfg.ca_file {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let (Some(c), Some(k)) = (&cfg.cert_file, &cfg.key_file) {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            options = options.with_tls(tls);
        }
        let endpoints = cfg.endpoints.join(",");
        let client = tokio::time::timeout(TIMEOUT, Client::connect(&cfg.endpoints, Some(options)))
            .await
            .map_err(|_| Error::Timeout { endpoints: endpoints.clone(), outcome: "nothing was changed" })?
            .map_err(|e| Error::Etcd { endpoints, message: e.to_string() })?;
        Ok(Self { client, cfg: Arc::new(cfg.clone()), keys: Arc::new(Keyring::new(key, older)) })
    }

    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    pub fn endpoints(&self) -> String {
        self.cfg.endpoints.join(",")
    }

    pub fn prefix(&self) -> &str {
        &self.cfg.prefix
    }

    pub fn key_id(&self) -> String {
        self.keys.current().id()
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.cfg.prefix)
    }

    fn etcd(&self, e: etcd_client::Error) -> Error {
        let message = match &e {
            etcd_client::Error::GRpcStatus(s) => s.message().to_owned(),
            e => e.to_string(),
        };
        if message.contains("deadline") || message.contains("timed out") {
            return Error::Timeout { endpoints: self.endpoints(), outcome: "nothing was changed" };
        }
        Error::Etcd { endpoints: self.endpoints(), message }
    }

    /// One etcd call with the deadline; `outcome` says what a timeout means for it.
    async fn call<T>(
        &self,
        outcome: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(TIMEOUT, fut).await {
            Err(_) => Err(Error::Timeout { endpoints: self.endpoints(), outcome }),
            Ok(Err(e)) => Err(match self.etcd(e) {
                Error::Timeout { endpoints, .. } => Error::Timeout { endpoints, outcome },
                e => e,
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    fn bad(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::BadValue { endpoints: self.endpoints(), key: key.to_owned(), reason: reason.into() }
    }

    /// `P/meta`, if the prefix holds a cluster.
    pub async fn meta(&self) -> Result<Option<ClusterMeta>, Error> {
        let key = self.key("meta");
        let resp = self.call("nothing was changed", self.client.kv_client().get(key.clone(), None)).await?;
        let Some(kv) = resp.kvs().first() else { return Ok(None) };
        serde_json::from_slice(kv.value()).map(Some).map_err(|e| self.bad(&key, e.to_string()))
    }

    /// Refuses a cluster this node cannot read: no cluster, or sealed with another key.
    pub async fn check(&self) -> Result<ClusterMeta, Error> {
        let meta = self
            .meta()
            .await?
            .ok_or_else(|| Error::NoCluster { endpoints: self.endpoints(), prefix: self.cfg.prefix.clone() })?;
        if meta.key_id != self.keys.current().id() && !self.keys.has(&meta.key_id) {
            return Err(Error::WrongKey {
                file: self.cfg.secret_key_file.clone(),
                have: self.keys.current().id(),
                want: meta.key_id,
            });
        }
        Ok(meta)
    }

    /// The whole store at the current revision (a linearizable read).
    pub async fn read(&self) -> Result<Image, Error> {
        let prefix = self.key("store/");
        let resp = self
            .call(
                "nothing was changed",
                self.client.kv_client().get(prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut image = Image { revision: resp.header().map_or(0, |h| h.revision()), ..Image::default() };
        if resp.kvs().len() > mirror::MAX_FILES {
            return Err(self.bad(&prefix, format!("more than {} files", mirror::MAX_FILES)));
        }
        for kv in resp.kvs() {
            let (rel, file) = self.decode(kv.key(), kv.value())?;
            image.mods.insert(rel.clone(), kv.mod_revision());
            image.files.insert(rel, file);
        }
        // At the same revision: which write the image is the result of.
        let changed = self
            .call(
                "nothing was changed",
                self.client.kv_client().get(self.key("changed"), Some(GetOptions::new().with_revision(image.revision))),
            )
            .await?;
        image.changed = changed.kvs().first().map_or(0, |kv| kv.mod_revision());
        Ok(image)
    }

    /// A store key and value from etcd: the file's name and its (unsealed) bytes.
    fn decode(&self, key: &[u8], value: &[u8]) -> Result<(String, FileImage), Error> {
        let key = String::from_utf8_lossy(key);
        let rel = key.strip_prefix(&self.key("store/")).unwrap_or_default();
        if !mirror::valid_name(rel) {
            return Err(self.bad(&key, "not a store file name"));
        }
        if value.len() > MAX_VALUE {
            return Err(self.bad(&key, format!("{} bytes; at most {MAX_VALUE}", value.len())));
        }
        let file = if seal::is_sealed(value) {
            FileImage { bytes: self.keys.open(&key, value)?, private: true }
        } else {
            FileImage { bytes: value.to_vec(), private: false }
        };
        Ok((rel.to_owned(), file))
    }

    fn encode(&self, rel: &str, file: &FileImage) -> Vec<u8> {
        if file.private {
            self.keys.current().seal(&self.key(&format!("store/{rel}")), &file.bytes)
        } else {
            file.bytes.clone()
        }
    }

    /// Commits what `files` changes relative to `base` in one transaction, guarded by
    /// each changed key's revision in `base` and by `fence`. `None`: nothing changed.
    pub async fn commit(
        &self,
        base: &Image,
        files: &BTreeMap<String, FileImage>,
        fence: Option<&Fence>,
        exclusive: bool,
    ) -> Result<Option<i64>, Error> {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for (rel, f) in files {
            if base.files.get(rel) != Some(f) {
                let key = self.key(&format!("store/{rel}"));
                compares.push(Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    base.mods.get(rel).copied().unwrap_or(0),
                ));
                ops.push(TxnOp::put(key, self.encode(rel, f), None));
            }
        }
        for rel in base.files.keys().filter(|k| !files.contains_key(*k)) {
            let key = self.key(&format!("store/{rel}"));
            compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, base.mods[rel]));
            ops.push(TxnOp::delete(key, None));
        }
        if ops.is_empty() {
            return Ok(None);
        }
        if let Some(f) = fence {
            compares.push(Compare::value(self.key("renewer"), CompareOp::Equal, f.token.clone()));
        }
        // A short admin write (a cert command or job) also checks that no other write
        // committed since its read: two nodes creating the same friendly name at once
        // cannot both win. Orders (the renewer's, `acme request`) guard only the keys they
        // touch, so a concurrent write never costs them a certificate already issued.
        if exclusive {
            compares.push(Compare::mod_revision(self.key("changed"), CompareOp::Equal, base.changed));
        }
        // Its mod revision is the store's last change: what `cluster status` measures lag by.
        ops.push(TxnOp::put(self.key("changed"), self.cfg.node.clone(), None));
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = self
            .call(
                "the change may still be applied in full once etcd answers (check with `portcullis cluster status`)",
                self.client.kv_client().txn(txn),
            )
            .await?;
        if resp.succeeded() {
            return Ok(Some(resp.header().map_or(0, |h| h.revision())));
        }
        if let Some(f) = fence
            && self.renewer().await?.as_deref() != Some(f.token.as_str())
        {
            return Err(Error::Fenced { endpoints: self.endpoints() });
        }
        let changed = files.keys().chain(base.files.keys()).find(|k| base.files.get(*k) != files.get(*k));
        let key = if exclusive {
            "the store (another write committed first)".to_owned()
        } else {
            changed.cloned().unwrap_or_default()
        };
        Err(Error::Conflict { endpoints: self.endpoints(), key })
    }

    /// Fills an empty prefix with `files` (`cluster init`).
    pub async fn init(&self, files: &BTreeMap<String, FileImage>) -> Result<i64, Error> {
        let resp = self
            .call(
                "nothing was changed",
                self.client.kv_client().get(self.key(""), Some(GetOptions::new().with_prefix().with_count_only())),
            )
            .await?;
        if resp.count() > 0 {
            return Err(Error::NotEmpty {
                endpoints: self.endpoints(),
                prefix: self.cfg.prefix.clone(),
                count: resp.count(),
            });
        }
        // etcd takes at most 128 operations per transaction by default; P/meta goes last,
        // so a cut-off init is a prefix without meta, which `init` refuses and `join` names.
        let entries: Vec<(&String, &FileImage)> = files.iter().collect();
        for chunk in entries.chunks(100) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(rel, f)| TxnOp::put(self.key(&format!("store/{rel}")), self.encode(rel, f), None))
                .collect();
            self.call(
                "the init may be cut off; check with `etcdctl get --prefix --keys-only`",
                self.client.kv_client().txn(Txn::new().and_then(ops)),
            )
            .await?;
        }
        let meta = ClusterMeta { format: FORMAT, key_id: self.keys.current().id(), created_by: self.cfg.node.clone() };
        let meta_key = self.key("meta");
        let txn = Txn::new().when([Compare::version(meta_key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            meta_key,
            serde_json::to_vec(&meta).unwrap_or_default(),
            None,
        )]);
        let resp = self.call("the init may be cut off", self.client.kv_client().txn(txn)).await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Re-seals every private value with the current key (after rotating it), in
    /// transactions of at most 50 keys each guarded by its revision; `P/meta` names the
    /// new key last. Returns how many values were sealed again.
    pub async fn rekey(&self) -> Result<usize, Error> {
        let resp = self
            .call(
                "nothing was changed",
                self.client.kv_client().get(self.key("store/"), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let current = self.keys.current().id();
        let mut stale = Vec::new();
        for kv in resp.kvs() {
            if seal::key_id_of(kv.value()).is_some_and(|id| id != current) {
                let (rel, file) = self.decode(kv.key(), kv.value())?;
                stale.push((kv.key().to_vec(), kv.mod_revision(), self.encode(&rel, &file)));
            }
        }
        for chunk in stale.chunks(50) {
            let compares: Vec<Compare> =
                chunk.iter().map(|(k, rev, _)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev)).collect();
            let ops: Vec<TxnOp> = chunk.iter().map(|(k, _, v)| TxnOp::put(k.clone(), v.clone(), None)).collect();
            let resp = self
                .call(
                    "the rekey may still be applied; run it again",
                    self.client.kv_client().txn(Txn::new().when(compares).and_then(ops)),
                )
                .await?;
            if !resp.succeeded() {
                return Err(Error::Conflict { endpoints: self.endpoints(), key: "a private key".into() });
            }
        }
        let meta = ClusterMeta { format: FORMAT, key_id: current, created_by: self.cfg.node.clone() };
        self.call(
            "the rekey may still be applied; run it again",
            self.client.kv_client().put(self.key("meta"), serde_json::to_vec(&meta).unwrap_or_default(), None),
        )
        .await?;
        Ok(stale.len())
    }

    /// Records an order in progress (`P/orders/<id>`: its URL and key, sealed), so a
    /// renewer that takes over resumes it instead of ordering again. Guarded by `fence`.
    pub async fn record_order(&self, id: &str, record: &[u8], fence: Option<&Fence>) -> Result<(), Error> {
        let key = self.key(&format!("orders/{id}"));
        let put = TxnOp::put(key.clone(), self.keys.current().seal(&key, record), None);
        let txn = match fence {
            Some(f) => Txn::new()
                .when([Compare::value(self.key("renewer"), CompareOp::Equal, f.token.clone())])
                .and_then([put]),
            None => Txn::new().and_then([put]),
        };
        let resp = self.call("the order may be recorded", self.client.kv_client().txn(txn)).await?;
        if resp.succeeded() { Ok(()) } else { Err(Error::Fenced { endpoints: self.endpoints() }) }
    }

    /// The order recorded under `id`, unsealed.
    pub async fn recorded_order(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        let key = self.key(&format!("orders/{id}"));
        let resp = self.call("", self.client.kv_client().get(key.clone(), None)).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(self.keys.open(&key, kv.value())?)),
        }
    }

    pub async fn forget_order(&self, id: &str) {
        let _ = self.call("", self.client.kv_client().delete(self.key(&format!("orders/{id}")), None)).await;
    }

    /// A lease of `ttl` seconds.
    pub async fn grant(&self, ttl: i64) -> Result<i64, Error> {
        Ok(self.call("no lease", self.client.lease_client().grant(ttl, None)).await?.id())
    }

    /// Publishes an HTTP-01 answer for every node; returns the revision that holds it.
    pub async fn publish_token(&self, token: &str, key_authorization: &str, lease: i64) -> Result<i64, Error> {
        let resp = self
            .call(
                "the token may be published",
                self.client.kv_client().put(
                    self.key(&format!("challenges/{token}")),
                    key_authorization,
                    Some(PutOptions::new().with_lease(lease)),
                ),
            )
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    pub async fn remove_token(&self, token: &str) {
        let _ = self.call("", self.client.kv_client().delete(self.key(&format!("challenges/{token}")), None)).await;
    }

    /// A token's answer read straight from etcd (a node whose copy lags behind).
    pub async fn token(&self, token: &str) -> Option<String> {
        let resp =
            self.call("", self.client.kv_client().get(self.key(&format!("challenges/{token}")), None)).await.ok()?;
        resp.kvs().first().and_then(|kv| kv.value_str().ok()).map(str::to_owned)
    }

    /// Waits (at most `max`) until every live node has applied `revision`; false when
    /// some node had not.
    pub async fn wait_applied(&self, revision: i64, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            if let Ok(nodes) = self.nodes().await
                && nodes.iter().all(|n| n.applied >= revision)
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every live node's report.
    pub async fn nodes(&self) -> Result<Vec<NodeReport>, Error> {
        let resp = self
            .call("", self.client.kv_client().get(self.key("nodes/"), Some(GetOptions::new().with_prefix())))
            .await?;
        Ok(resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
    }

    pub async fn report(&self, report: &NodeReport, lease: i64) -> Result<(), Error> {
        let value = serde_json::to_vec(report).unwrap_or_default();
        self.call(
            "",
            self.client.kv_client().put(
                self.key(&format!("nodes/{}", self.cfg.node)),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        Ok(())
    }

    /// The revision of the store's last change.
    pub async fn last_change(&self) -> Result<i64, Error> {
        let resp = self.call("", self.client.kv_client().get(self.key("changed"), None)).await?;
        Ok(resp.kvs().first().map_or(0, |kv| kv.mod_revision()))
    }

    /// `P/renewer`'s value: who renews.
    pub async fn renewer(&self) -> Result<Option<String>, Error> {
        let resp = self.call("", self.client.kv_client().get(self.key("renewer"), None)).await?;
        Ok(resp.kvs().first().and_then(|kv| kv.value_str().ok()).map(str::to_owned))
    }

    /// Becomes the renewer if there is none; the fence when this node holds the office.
    pub async fn campaign(&self, lease: i64) -> Result<Option<Fence>, Error> {
        let token = format!("{} {lease:x}", self.cfg.node);
        let key = self.key("renewer");
        let txn = Txn::new().when([Compare::version(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            token.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
        self.call("", self.client.kv_client().txn(txn)).await?;
        Ok((self.renewer().await?.as_deref() == Some(token.as_str())).then_some(Fence { token }))
    }

    /// Claims `claims/<what>` for the lease's life if no node holds it: one node at a
    /// time does the work it names (an on-demand order for one name).
    pub async fn claim(&self, what: &str, lease: i64) -> Result<bool, Error> {
        let key = self.key(&format!("claims/{what}"));
        let txn = Txn::new().when([Compare::version(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            self.cfg.node.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let resp = self.call("nothing was claimed", self.client.kv_client().txn(txn)).await?;
        Ok(resp.succeeded())
    }

    pub async fn release(&self, what: &str) {
        let _ = self.call("", self.client.kv_client().delete(self.key(&format!("claims/{what}")), None)).await;
    }

    /// Gives the office up (shutdown): another node takes over at once.
    pub async fn resign(&self, fence: &Fence) {
        let key = self.key("renewer");
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, fence.token.clone())])
            .and_then([TxnOp::delete(key, None)]);
        let _ = self.call("", self.client.kv_client().txn(txn)).await;
    }

    /// etcd's members and each endpoint's status line (`cluster status`).
    pub async fn members(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(list) = self.call("", self.client.cluster_client().member_list()).await {
            for m in list.members() {
                out.push(format!("{} {}", m.name(), m.client_urls().join(",")));
            }
        }
        out
    }
}

/// What the daemon knows of its cluster, for metrics, `/status.json` and the renewer.
#[derive(Default)]
pub struct Status {
    pub connected: AtomicBool,
    /// The revision the store copy reflects.
    pub applied: AtomicI64,
    /// The newest revision etcd reported.
    pub seen: AtomicI64,
    pub sync_errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Set while this node is the renewer.
    pub fence: Mutex<Option<Fence>>,
    pub renewer: Mutex<Option<String>>,
    /// This node's lease (0: none yet).
    lease: AtomicI64,
    /// Wakes the renewer when this node becomes it.
    pub elected: tokio::sync::Notify,
    /// Wakes the membership task when the applied revision moved.
    applied_moved: tokio::sync::Notify,
}

impl Status {
    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    pub fn fence(&self) -> Option<Fence> {
        self.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn error(&self, e: &Error) {
        self.sync_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
        metrics::counter!(crate::metrics::names::CLUSTER_SYNC_ERRORS).increment(1);
    }

    fn publish_metrics(&self) {
        let applied = self.applied.load(Ordering::Relaxed);
        metrics::gauge!(crate::metrics::names::CLUSTER_CONNECTED)
            .set(f64::from(u8::from(self.connected.load(Ordering::Relaxed))));
        metrics::gauge!(crate::metrics::names::CLUSTER_APPLIED_REVISION).set(applied as f64);
        metrics::gauge!(crate::metrics::names::CLUSTER_LAG)
            .set((self.seen.load(Ordering::Relaxed) - applied).max(0) as f64);
        metrics::gauge!(crate::metrics::names::CLUSTER_IS_RENEWER).set(f64::from(u8::from(self.fence().is_some())));
    }

    /// The summary `/status.json` and the status page show.
    pub fn view(&self, node: &str) -> StatusView {
        let applied = self.applied.load(Ordering::Relaxed);
        StatusView {
            node: node.to_owned(),
            connected: self.connected.load(Ordering::Relaxed),
            applied_revision: applied,
            lag: (self.seen.load(Ordering::Relaxed) - applied).max(0),
            renewer: self.renewer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            is_renewer: self.fence().is_some(),
            sync_errors: self.sync_errors.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        }
    }
}

/// The cluster as `/status.json` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub node: String,
    pub connected: bool,
    pub applied_revision: i64,
    pub lag: i64,
    pub renewer: Option<String>,
    pub is_renewer: bool,
    pub sync_errors: u64,
    pub last_error: Option<String>,
}

/// A scratch copy of the store materialised from one read, for one write.
pub struct Work {
    dir: PathBuf,
    pub base: Image,
    /// Fails if any other write committed since the read (short admin writes); orders
    /// set it false and guard only the keys they change.
    pub exclusive: bool,
}

impl Work {
    /// Reads the store from etcd and materialises it under `store/.cluster-work/`.
    pub async fn begin(cluster: &Cluster, store_dir: &Path) -> Result<Self, Error> {
        cluster.check().await?;
        let base = cluster.read().await?;
        let dir = store_dir.join(".cluster-work").join(format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        let work = Self { dir, base, exclusive: true };
        let (dir, files) = (work.dir.clone(), work.base.files.clone());
        blocking(move || Ok(mirror::write_scratch(&dir, &files)?)).await?;
        Ok(work)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Commits what changed in the scratch copy, then brings the node's own copy up to
    /// date so the change is served here at once. `None`: nothing changed.
    pub async fn commit(
        mut self,
        cluster: &Cluster,
        fence: Option<&Fence>,
        store_dir: &Path,
    ) -> Result<Option<i64>, Error> {
        self.checkpoint(cluster, fence, store_dir).await
    }

    /// Commits what changed so far and goes on from there: a long task (the renewer's
    /// pass) publishes each finished certificate at once, and a later failure loses
    /// nothing committed before it.
    pub async fn checkpoint(
        &mut self,
        cluster: &Cluster,
        fence: Option<&Fence>,
        store_dir: &Path,
    ) -> Result<Option<i64>, Error> {
        let dir = self.dir.clone();
        let files = blocking(move || Ok(mirror::read_all(&dir)?)).await?;
        let rev = cluster.commit(&self.base, &files, fence, self.exclusive && fence.is_none()).await?;
        if let Some(rev) = rev {
            // Every key the transaction wrote now has its revision.
            for (rel, f) in &files {
                if self.base.files.get(rel) != Some(f) {
                    self.base.mods.insert(rel.clone(), rev);
                }
            }
            self.base.mods.retain(|rel, _| files.contains_key(rel));
            self.base.files = files;
            self.base.revision = rev;
            self.base.changed = rev;
            refresh(cluster, store_dir).await?;
        }
        Ok(rev)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Materialises the current cluster store into the node's copy at `store_dir`.
pub async fn refresh(cluster: &Cluster, store_dir: &Path) -> Result<i64, Error> {
    let image = cluster.read().await?;
    let (dir, prefix) = (store_dir.to_owned(), cluster.prefix().to_owned());
    let revision = image.revision;
    blocking(move || materialise(&dir, &prefix, &image.files, image.revision, None)).await?;
    Ok(revision)
}

/// Makes the copy at `dir` hold `files` at `revision`, under the store lock.
fn materialise(
    dir: &Path,
    prefix: &str,
    files: &BTreeMap<String, FileImage>,
    revision: i64,
    only: Option<&BTreeSet<String>>,
) -> Result<usize, Error> {
    let _lock = mirror::lock(dir)?;
    if mirror::read_stamp(dir).is_some_and(|s| s.prefix == prefix && s.revision > revision) {
        return Ok(0); // a newer state is already here (another writer refreshed it)
    }
    let n = mirror::apply(dir, files, only)?;
    mirror::write_stamp(dir, &Stamp { prefix: prefix.to_owned(), revision })?;
    Ok(n)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Error::Io { path: PathBuf::from("."), error: std::io::Error::other(format!("task failed: {e}")) })
    })
}

/// Keeps the node's store copy equal to etcd until `shutdown`: a full read at revision
/// R, then a watch from R+1 applying whole revisions; after a disconnect it resumes from
/// the last applied revision, and re-reads everything when that one was compacted.
/// HTTP-01 tokens are written to `acme/challenges/` for the local responder.
pub async fn sync(
    cluster: Cluster,
    store_dir: PathBuf,
    status: Arc<Status>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut image: Option<Image> = None;
    loop {
        let result = tokio::select! {
            r = sync_once(&cluster, &store_dir, &status, &mut image) => r,
            () = shutdown.cancelled() => return,
        };
        status.connected.store(false, Ordering::Relaxed);
        status.publish_metrics();
        if let Err(e) = result {
            tracing::warn!(error = %e, "cluster sync");
            status.error(&e);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Returns `Ok` when the watch must be recreated (compaction, stream end).
async fn sync_once(
    cluster: &Cluster,
    store_dir: &Path,
    status: &Status,
    image: &mut Option<Image>,
) -> Result<(), Error> {
    if image.is_none() {
        cluster.check().await?;
        let full = cluster.read().await?;
        let tokens = read_tokens(cluster).await?;
        let (dir, prefix, files, rev) =
            (store_dir.to_owned(), cluster.prefix().to_owned(), full.files.clone(), full.revision);
        let n = blocking(move || materialise(&dir, &prefix, &files, rev, None)).await?;
        write_tokens(store_dir, &tokens, true)?;
        tracing::info!(revision = rev, changed = n, "cluster: store copy materialised");
        *image = Some(full);
        applied(status, rev);
    }
    let from = image.as_ref().map_or(0, |i| i.revision) + 1;
    let options = WatchOptions::new().with_prefix().with_start_revision(from).with_progress_notify();
    let stream = cluster.call("", cluster.client.watch_client().watch(cluster.key(""), Some(options))).await?;
    let (mut requests, mut responses) = stream.split();
    status.connected.store(true, Ordering::Relaxed);
    status.publish_metrics();
    // A quiet cluster sends nothing: ask for a progress notification every few seconds,
    // and take silence past two of them as a dead connection.
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut heard = tokio::time::Instant::now();
    loop {
        let msg = tokio::select! {
            r = responses.message() => r.map_err(|e| cluster.etcd(e))?,
            _ = tick.tick() => {
                if heard.elapsed() > Duration::from_secs(12) {
                    return Err(Error::Timeout { endpoints: cluster.endpoints(), outcome: "the watch is re-created" });
                }
                let _ = requests.request_progress().await;
                continue;
            }
        };
        heard = tokio::time::Instant::now();
        let Some(resp) = msg else { return Ok(()) };
        if resp.created() {
            continue;
        }
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    "cluster: the revision to resume from was compacted; reading everything again"
                );
                *image = None;
                return Ok(());
            }
            return Err(Error::Etcd { endpoints: cluster.endpoints(), message: resp.cancel_reason().to_owned() });
        }
        let header = resp.header().map_or(0, |h| h.revision());
        status.seen.fetch_max(header, Ordering::Relaxed);
        let img = image.get_or_insert_with(Image::default);
        let mut touched = BTreeSet::new();
        let mut tokens = BTreeMap::new();
        let mut rev = img.revision;
        let (store_prefix, token_prefix, renewer_key) =
            (cluster.key("store/"), cluster.key("challenges/"), cluster.key("renewer"));
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            rev = rev.max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(rel) = key.strip_prefix(&store_prefix) {
                if ev.event_type() == EventType::Delete {
                    img.files.remove(rel);
                    img.mods.remove(rel);
                    touched.insert(mirror::unit_of(rel).to_owned());
                } else {
                    let (rel, file) = cluster.decode(kv.key(), kv.value())?;
                    touched.insert(mirror::unit_of(&rel).to_owned());
                    img.mods.insert(rel.clone(), kv.mod_revision());
                    img.files.insert(rel, file);
                }
            } else if let Some(token) = key.strip_prefix(&token_prefix) {
                let value =
                    (ev.event_type() == EventType::Put).then(|| String::from_utf8_lossy(kv.value()).into_owned());
                tokens.insert(token.to_owned(), value);
            } else if key == renewer_key {
                *status.renewer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    (ev.event_type() == EventType::Put).then(|| String::from_utf8_lossy(kv.value()).into_owned());
            }
        }
        if touched.is_empty() && tokens.is_empty() {
            // Node reports, elections, progress notifications (every event up to the
            // header's revision has been delivered): nothing to apply.
            if resp.events().is_empty() && header > img.revision {
                img.revision = header;
            } else {
                img.revision = rev;
            }
            continue;
        }
        // Resume from the last event seen: a header may run ahead of events not yet sent.
        img.revision = rev;
        write_tokens(store_dir, &tokens, false)?;
        if !touched.is_empty() {
            let (dir, prefix, files, r) =
                (store_dir.to_owned(), cluster.prefix().to_owned(), img.files.clone(), img.revision);
            blocking(move || materialise(&dir, &prefix, &files, r, Some(&touched))).await?;
        }
        applied(status, img.revision);
    }
}

fn applied(status: &Status, revision: i64) {
    status.applied.store(revision, Ordering::Relaxed);
    status.seen.fetch_max(revision, Ordering::Relaxed);
    status.applied_moved.notify_one();
    status.publish_metrics();
}

async fn read_tokens(cluster: &Cluster) -> Result<BTreeMap<String, Option<String>>, Error> {
    let resp = cluster
        .call("", cluster.client.kv_client().get(cluster.key("challenges/"), Some(GetOptions::new().with_prefix())))
        .await?;
    let prefix = cluster.key("challenges/");
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            Some((key.strip_prefix(&prefix)?.to_owned(), Some(String::from_utf8_lossy(kv.value()).into_owned())))
        })
        .collect())
}

/// Writes published tokens into `acme/challenges/` and removes withdrawn ones (all
/// others too, after a full read).
fn write_tokens(store_dir: &Path, tokens: &BTreeMap<String, Option<String>>, exact: bool) -> Result<(), Error> {
    let dir = store_dir.join("acme").join("challenges");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |error| Error::Io { path, error }
    };
    if exact {
        for (sub, prefix) in [(dir.clone(), ""), (dir.join("alpn"), "alpn/")] {
            for e in std::fs::read_dir(&sub).into_iter().flatten().flatten() {
                let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                if e.file_type().is_ok_and(|t| t.is_file()) && !tokens.contains_key(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    for (token, value) in tokens {
        // HTTP-01 tokens, and TLS-ALPN-01 key authorizations by domain (`alpn/<domain>`).
        let path = match token.strip_prefix("alpn/") {
            Some(domain) if crate::pki::challenge_domain(domain) => dir.join("alpn").join(domain),
            None if valid_token(token) => dir.join(token),
            _ => continue,
        };
        match value {
            Some(v) if v.len() <= 1024 => {
                let parent = path.parent().unwrap_or(&dir).to_owned();
                crate::store::atomic::create_dir(&parent).map_err(io(&parent))?;
                crate::store::write_export(&path, v.as_bytes(), false, true)?;
            }
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

fn valid_token(token: &str) -> bool {
    (16..=256).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Holds this node's lease until `shutdown`: reports the applied revision under
/// `P/nodes/<node>`, campaigns for the renewer's office and keeps [`Status::fence`]
/// true to it. A lease that cannot be renewed within its TTL deposes this node.
pub async fn membership(cluster: Cluster, status: Arc<Status>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        let r = tokio::select! {
            r = hold_lease(&cluster, &status) => r,
            () = shutdown.cancelled() => Ok(()),
        };
        let fence = status.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(f) = fence {
            if shutdown.is_cancelled() {
                let c = cluster.clone();
                // Hand the office over at once instead of after the TTL.
                let _ = tokio::time::timeout(TIMEOUT, c.resign(&f)).await;
            } else {
                tracing::warn!("cluster: no longer the renewer");
            }
        }
        status.publish_metrics();
        if shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = r {
            tracing::warn!(error = %e, "cluster: lease");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn hold_lease(cluster: &Cluster, status: &Status) -> Result<(), Error> {
    let lease = cluster.grant(LEASE_TTL).await?;
    status.lease.store(lease, Ordering::Relaxed);
    let (mut keeper, mut acks) = cluster.call("", cluster.client.lease_client().keep_alive(lease)).await?;
    let mut last_renewed = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported = -1;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = status.applied_moved.notified() => {}
        }
        // The office lapses with the lease: stop acting as renewer before etcd does.
        if last_renewed.elapsed() > Duration::from_secs(LEASE_TTL as u64 - 2) {
            return Err(Error::Timeout { endpoints: cluster.endpoints(), outcome: "the lease is lost" });
        }
        if last_renewed.elapsed() >= Duration::from_secs(3) {
            let renewed = tokio::time::timeout(TIMEOUT, async {
                keeper.keep_alive().await.ok()?;
                acks.message().await.ok()?
            })
            .await;
            match renewed {
                Ok(Some(ack)) if ack.ttl() > 0 => last_renewed = tokio::time::Instant::now(),
                Ok(Some(_)) => {
                    return Err(Error::Etcd { endpoints: cluster.endpoints(), message: "the lease expired".into() });
                }
                _ => continue,
            }
        }
        let applied = status.applied.load(Ordering::Relaxed);
        if applied != reported {
            let last_error = status.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let report =
                NodeReport { node: cluster.node().to_owned(), version: crate::VERSION.to_owned(), applied, last_error };
            if cluster.report(&report, lease).await.is_ok() {
                reported = applied;
            }
        }
        if let Ok(fence) = cluster.campaign(lease).await {
            let mut current = status.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if fence.is_some() && current.is_none() {
                tracing::info!(node = cluster.node(), "cluster: this node is now the renewer");
                status.elected.notify_one();
            }
            *current = fence;
        }
        if let Ok(r) = cluster.renewer().await {
            *status.renewer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = r;
        }
        status.publish_metrics();
    }
}
