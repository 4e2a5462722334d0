//! HTTP-01 challenge tokens: what the plain-HTTP listener answers at
//! `/.well-known/acme-challenge/TOKEN`, and how an order publishes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

/// HTTP-01 tokens and their key authorizations, answered by the plain-HTTP listener at
/// `/.well-known/acme-challenge/TOKEN`. The daemon's own orders live in memory; an order
/// run by the CLI while the daemon holds the port is published as a file in
/// `store/acme/challenges/`, which the daemon reads when the memory has no answer.
#[derive(Clone, Default)]
pub struct Challenges {
    tokens: Arc<Mutex<HashMap<String, String>>>,
    dir: Option<PathBuf>,
    /// On a cluster node, once connected: where a token this node's copy lacks (it
    /// lags behind) is read from.
    remote: Arc<std::sync::OnceLock<crate::cluster::Cluster>>,
}

/// `store/acme/challenges/`.
pub fn challenge_dir(store: &Path) -> PathBuf {
    store.join("acme").join("challenges")
}

/// base64url, as RFC 8555 tokens are: nothing else can name a file.
fn valid_token(token: &str) -> bool {
    (16..=256).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { tokens: Arc::default(), dir, remote: Arc::default() }
    }

    /// On a cluster node: tokens missing here are read from etcd.
    pub fn set_remote(&self, cluster: crate::cluster::Cluster) {
        let _ = self.remote.set(cluster);
    }

    /// [`Self::answer`], falling back to a linearizable read from etcd on a cluster node
    /// (bounded by the cluster's call deadline).
    pub async fn answer_or_fetch(&self, token: &str) -> Option<String> {
        if let Some(a) = self.answer(token) {
            return Some(a);
        }
        let cluster = self.remote.get()?;
        cluster.token(token).await.filter(|v| v.len() <= 1024)
    }

    /// The key authorization for `token`, if an order is waiting for it.
    pub fn answer(&self, token: &str) -> Option<String> {
        if !valid_token(token) {
            return None;
        }
        if let Some(v) = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(token) {
            return Some(v.clone());
        }
        let path = self.dir.as_ref()?.join(token);
        let text = crate::input::read_text(&path, 4096, crate::input::Links::Refuse).ok()?;
        Some(text.trim().to_owned())
    }

    /// Publishes a token until the guard is dropped; `on_disk` also writes the file.
    pub fn publish(&self, token: &str, key_authorization: &str, on_disk: bool) -> Result<TokenGuard> {
        if !valid_token(token) {
            bail!("the CA sent a malformed challenge token {token:?}");
        }
        let mut file = None;
        if on_disk && let Some(dir) = &self.dir {
            crate::store::atomic::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(token);
            crate::store::write_export(&path, key_authorization.as_bytes(), false, true)?;
            file = Some(path);
        }
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token.to_owned(), key_authorization.to_owned());
        Ok(TokenGuard { challenges: self.clone(), token: token.to_owned(), file })
    }
}

/// A TLS-ALPN-01 challenge this process presents (or, for a running daemon, the file
/// it reads), until dropped.
pub struct AlpnPublished {
    _memory: Option<crate::sni::alpn::AlpnGuard>,
    file: Option<PathBuf>,
}

impl Drop for AlpnPublished {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Challenges {
    /// Presents the TLS-ALPN-01 challenge certificate for `domain` on this process's
    /// TLS listeners; `on_disk` also writes `alpn/<domain>` for a running daemon.
    pub fn publish_alpn(&self, domain: &str, key_authorization: &str, on_disk: bool) -> Result<AlpnPublished> {
        if !crate::sni::alpn::valid_domain(domain) {
            bail!("the CA sent a malformed identifier {domain:?}");
        }
        let memory = crate::sni::alpn::publish(domain, key_authorization).map_err(|e| anyhow::anyhow!(e))?;
        let mut file = None;
        if on_disk && let Some(dir) = &self.dir {
            let dir = dir.join("alpn");
            crate::store::atomic::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(domain);
            crate::store::write_export(&path, key_authorization.as_bytes(), false, true)?;
            file = Some(path);
        }
        Ok(AlpnPublished { _memory: Some(memory), file })
    }
}

pub struct TokenGuard {
    challenges: Challenges,
    token: String,
    file: Option<PathBuf>,
}

impl Drop for TokenGuard {
    fn drop(&mut self) {
        self.challenges.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.token);
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// How this process answers challenges: the daemon answers from memory; the CLI also
/// publishes files for a running daemon and checks, for every port it could not bind,
/// that whoever holds it gives the right answer before telling the CA to look.
#[derive(Clone)]
pub struct Responder {
    pub challenges: Challenges,
    pub on_disk: bool,
    /// Addresses held by another process (the daemon) to check before `set_ready`.
    pub check: Vec<SocketAddr>,
    /// On a cluster: tokens also go to etcd, where every node answers them from.
    pub cluster: Option<ClusterTokens>,
}

/// Where a cluster publishes tokens: etcd, tied to the publisher's lease.
#[derive(Clone)]
pub struct ClusterTokens {
    pub cluster: crate::cluster::Cluster,
    pub lease: i64,
    /// The renewer's office, which its order records are guarded by.
    pub fence: Option<crate::cluster::Fence>,
}

impl ClusterTokens {
    /// Publishes `token` to every node and waits (bounded) until each live node has it.
    pub async fn publish(&self, token: &str, key_authorization: &str) -> Result<ClusterTokenGuard> {
        let rev = self.cluster.publish_token(token, key_authorization, self.lease).await?;
        let guard = ClusterTokenGuard { cluster: self.cluster.clone(), token: token.to_owned() };
        if !self.cluster.wait_applied(rev, crate::cluster::TOKEN_WAIT).await {
            tracing::warn!(token, "not every cluster node has the challenge token yet; asking the CA anyway");
        }
        Ok(guard)
    }
}

/// Withdraws a cluster token when dropped.
pub struct ClusterTokenGuard {
    cluster: crate::cluster::Cluster,
    token: String,
}

impl Drop for ClusterTokenGuard {
    fn drop(&mut self) {
        let (cluster, token) = (self.cluster.clone(), std::mem::take(&mut self.token));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { cluster.remove_token(&token).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_no_files_outside() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!valid_token("../../../../etc/passwd"));
        assert!(!valid_token("short"));
        let c = Challenges::new(None);
        let g = c.publish("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0", "ka", false).unwrap();
        assert_eq!(c.answer("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0").as_deref(), Some("ka"));
        drop(g);
        assert_eq!(c.answer("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"), None);
    }
}
