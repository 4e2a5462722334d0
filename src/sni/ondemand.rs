//! On-demand certificates, the data plane's side: the hook a listener with `on_demand`
//! calls for an unknown name before its handshake, and the certificates issued that way
//! until the next snapshot serves them.
//!
//! The hook (who may be ordered, one order per name, rate limits, failure memory, the
//! order itself) is installed by the daemon from the control plane (`acme::ondemand`);
//! this module only carries it, so the data plane never imports the control plane.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use rustls::sign::CertifiedKey;

/// Issued certificates are kept here until a snapshot built after them is published
/// ([`forget_before`]); this bounds it if none is.
const KEEP: Duration = Duration::from_secs(300);

/// Orders (or declines) a certificate for a name; the future ends when a certificate
/// was [`remember`]ed for it or when it will not be.
pub trait Obtain: Send + Sync {
    fn obtain(&self, name: &str) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

static HOOK: OnceLock<Box<dyn Obtain>> = OnceLock::new();
type Issued = RwLock<HashMap<Box<str>, (Arc<CertifiedKey>, Instant)>>;
static ISSUED: OnceLock<Issued> = OnceLock::new();

fn issued_map() -> &'static Issued {
    ISSUED.get_or_init(RwLock::default)
}

/// Installs the daemon's hook (once per process).
pub fn install(hook: Box<dyn Obtain>) {
    let _ = HOOK.set(hook);
}

/// Asks the hook for `name` (lowercase, checked by the caller's lookup); nothing without
/// a hook. The caller bounds the wait.
pub async fn obtain(name: &str) {
    if let Some(h) = HOOK.get() {
        h.obtain(name).await;
    }
}

/// A certificate issued on demand for `name` and not yet in a snapshot.
pub fn issued(name: &str) -> Option<Arc<CertifiedKey>> {
    let map = issued_map().read().unwrap_or_else(std::sync::PoisonError::into_inner);
    map.get(name).map(|(k, _)| Arc::clone(k))
}

/// Forgets what was remembered before `instant`: a snapshot whose store read began
/// after it serves those names (or, deleted since, no longer does).
pub fn forget_before(instant: Instant) {
    let mut map = issued_map().write().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !map.is_empty() {
        map.retain(|_, (_, at)| *at >= instant);
    }
}

/// Serves `key` for `name` on on-demand listeners until the snapshot has it.
pub fn remember(name: &str, key: Arc<CertifiedKey>) {
    let mut map = issued_map().write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    map.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
    map.insert(name.into(), (key, now));
}
