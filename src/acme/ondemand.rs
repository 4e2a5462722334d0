//! On-demand certificates (`[acme.on_demand]`, listeners with `on_demand = true`): the
//! control plane's side of the hook `sni::ondemand` carries. For an unknown name at a
//! handshake it decides whether the name may be certified (an `allow` pattern, or the
//! `ask` service answering 2xx), orders it through the same `request` as every other
//! ACME certificate (stored as a normal ACME entry and renewed like the others) and
//! hands the result to the data plane.
//!
//! Bounds, because every name here comes from a stranger's ClientHello:
//! - one order per name at a time; every handshake for that name waits for it;
//! - at most `rate_limit` orders per `rate_period`, and `max_certificates` on-demand
//!   entries in the store;
//! - a name refused or failed is held for `failure_hold` (asked and ordered again only
//!   after that), in a table of at most [`MAX_HELD`] names;
//! - at most [`MAX_IN_FLIGHT`] names decided or ordered at once, [`MAX_ASKS`] questions
//!   to the ask service at once, each within [`ASK_TIMEOUT`].
//!
//! On a cluster the order runs on a scratch copy and is committed like `acme request`;
//! one node at a time orders a name (a claim in etcd); another node's handshake for it
//! gets the fallback certificate until the entry reaches its copy.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use tokio::sync::{Semaphore, watch};

use super::blocking;
use super::challenges::{Challenges, ClusterTokens, Responder};
use super::request::{Action, RequestParams, request};
use crate::config::{self, Config, OnDemand as Policy};
use crate::store::Store;

/// Names being decided or ordered at once; more are declined at once (not held).
pub const MAX_IN_FLIGHT: usize = 64;
/// Questions to the ask service at once.
pub const MAX_ASKS: usize = 8;
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Refused and failed names remembered; beyond this, expired ones are dropped first and
/// then nothing new is held (the rate limit still bounds the orders).
pub const MAX_HELD: usize = 100_000;

/// The hook installed into `sni::ondemand`.
pub struct OnDemand {
    inner: Arc<Inner>,
}

struct Inner {
    configs: watch::Receiver<Arc<Config>>,
    store_dir: PathBuf,
    challenges: Challenges,
    /// The runtime orders run on (the control plane's, not the connection's).
    runtime: tokio::runtime::Handle,
    asks: Semaphore,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each name being decided or ordered: closed when done.
    in_flight: HashMap<Box<str>, watch::Receiver<()>>,
    /// Refused or failed names, until when.
    held: HashMap<Box<str>, Instant>,
    /// When each order of the current rate period was placed.
    orders: VecDeque<Instant>,
}

/// Why no certificate was ordered, or what happened to the order.
enum Outcome {
    Issued(Action),
    /// Not permitted (allow and ask said no, or the name is not one to certify): held.
    Refused(String),
    /// Over a bound that frees itself (rate, in-flight, another node ordering): not held.
    Deferred(&'static str),
    /// The ask service or the order failed: held.
    Failed(String),
}

impl OnDemand {
    pub fn new(
        configs: watch::Receiver<Arc<Config>>,
        store_dir: PathBuf,
        challenges: Challenges,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let inner =
            Inner { configs, store_dir, challenges, runtime, asks: Semaphore::new(MAX_ASKS), state: Mutex::default() };
        Self { inner: Arc::new(inner) }
    }
}

impl crate::sni::ondemand::Obtain for OnDemand {
    fn obtain(&self, name: &str) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let inner = Arc::clone(&self.inner);
        let name: Box<str> = name.into();
        Box::pin(async move {
            let Some(mut done) = inner.join_or_start(name) else { return };
            // Ends when the order's task drops its sender.
            let _ = done.changed().await;
        })
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The order for `name` to wait for: the one in flight, or a new one. `None`: held,
    /// or too many in flight.
    fn join_or_start(self: &Arc<Self>, name: Box<str>) -> Option<watch::Receiver<()>> {
        let mut st = self.state();
        if let Some(until) = st.held.get(&name) {
            if Instant::now() < *until {
                count("held");
                return None;
            }
            st.held.remove(&name);
        }
        if let Some(done) = st.in_flight.get(&name) {
            return Some(done.clone());
        }
        if st.in_flight.len() >= MAX_IN_FLIGHT {
            count("busy");
            return None;
        }
        let (tx, rx) = watch::channel(());
        st.in_flight.insert(name.clone(), rx.clone());
        drop(st);
        let me = Arc::clone(self);
        self.runtime.spawn(async move {
            let config = me.configs.borrow().clone();
            let outcome = me.decide_and_order(&config, &name).await;
            me.finish(&name, &config, outcome);
            drop(tx);
        });
        Some(rx)
    }

    fn finish(&self, name: &str, config: &Config, outcome: Outcome) {
        let hold = config.acme.as_ref().and_then(|a| a.on_demand.as_ref()).map_or(Duration::ZERO, |p| p.failure_hold);
        let mut st = self.state();
        st.in_flight.remove(name);
        let held = match outcome {
            Outcome::Issued(action) => {
                count("issued");
                tracing::info!(target: "acme", name, %action, "on-demand certificate ready");
                false
            }
            Outcome::Refused(why) => {
                count("refused");
                tracing::info!(target: "acme", name, reason = %why, "on-demand certificate refused");
                true
            }
            Outcome::Deferred(why) => {
                count(why);
                tracing::debug!(target: "acme", name, reason = why, "on-demand certificate deferred");
                false
            }
            Outcome::Failed(e) => {
                count("failed");
                tracing::warn!(target: "acme", name, error = %e, "on-demand certificate failed");
                true
            }
        };
        if held && !hold.is_zero() {
            let now = Instant::now();
            if st.held.len() >= MAX_HELD {
                st.held.retain(|_, until| *until > now);
            }
            if st.held.len() < MAX_HELD {
                st.held.insert(name.into(), now + hold);
            }
        }
    }

    async fn decide_and_order(&self, config: &Config, name: &str) -> Outcome {
        let Some(acme) = config.acme.as_ref() else { return Outcome::Refused("no [acme] section".into()) };
        let Some(policy) = acme.on_demand.as_ref() else { return Outcome::Refused("no [acme.on_demand]".into()) };
        // Wildcards, IP addresses and single labels are never ordered on demand.
        if let Err(e) = config::check_acme_hostname(name, false) {
            return Outcome::Refused(e);
        }
        if !policy.allows(name) {
            match &policy.ask {
                None => return Outcome::Refused("no allow pattern covers it".into()),
                Some(url) => {
                    let Ok(_permit) = self.asks.try_acquire() else { return Outcome::Deferred("asks_busy") };
                    match ask(url, name).await {
                        Ok(status) if (200..300).contains(&status) => {}
                        Ok(status) => return Outcome::Refused(format!("the ask service answered {status}")),
                        Err(e) => return Outcome::Failed(format!("[acme.on_demand] ask: {e:#}")),
                    }
                }
            }
        }
        if !self.take_rate_slot(policy) {
            return Outcome::Deferred("rate_limited");
        }
        match self.order(config, acme, policy, name).await {
            Ok(o) => o,
            Err(e) => Outcome::Failed(format!("{e:#}").replace('\n', " ")),
        }
    }

    /// One order of the rate period, if the period has one left.
    fn take_rate_slot(&self, policy: &Policy) -> bool {
        let now = Instant::now();
        let mut st = self.state();
        while st.orders.front().is_some_and(|t| now.duration_since(*t) >= policy.rate_period) {
            st.orders.pop_front();
        }
        if st.orders.len() >= policy.rate_limit as usize {
            return false;
        }
        st.orders.push_back(now);
        true
    }

    async fn order(&self, config: &Config, acme: &config::Acme, policy: &Policy, name: &str) -> Result<Outcome> {
        let (outcome, key) = match &config.cluster {
            None => self.order_in(config, acme, policy, name, &self.store_dir, None).await?,
            Some(cfg) => {
                let cluster = crate::cluster::Cluster::connect(cfg).await?;
                let lease = cluster.grant(300).await?;
                if !cluster.claim(&format!("ondemand/{name}"), lease).await? {
                    return Ok(Outcome::Deferred("other_node"));
                }
                let mut work = crate::cluster::Work::begin(&cluster, &self.store_dir).await?;
                // An order takes a while: guard only the keys it changes.
                work.exclusive = false;
                let tokens = ClusterTokens { cluster: cluster.clone(), lease, fence: None };
                let dir = work.dir().to_owned();
                let out = self.order_in(config, acme, policy, name, &dir, Some(tokens)).await;
                let committed = work.commit(&cluster, None, &self.store_dir).await;
                cluster.release(&format!("ondemand/{name}")).await;
                committed?;
                out?
            }
        };
        // Only now is the entry in this node's store: a snapshot built from here on
        // serves it, and the daemon forgets what it remembered before such a build.
        if let Some(key) = key {
            crate::sni::ondemand::remember(name, key);
        }
        Ok(outcome)
    }

    /// Orders `name` in the store at `dir`; the certificate for the data plane.
    async fn order_in(
        &self,
        config: &Config,
        acme: &config::Acme,
        policy: &Policy,
        name: &str,
        dir: &std::path::Path,
        tokens: Option<ClusterTokens>,
    ) -> Result<(Outcome, Option<Arc<rustls::sign::CertifiedKey>>)> {
        // Listeners that serve only their assigned certificates get this one assigned;
        // the others serve every certificate anyway.
        let (store_dir, on_demand, max) = (dir.to_owned(), on_demand_listeners(config), policy.max_certificates);
        let (count, listeners) = blocking(move || {
            let store = Store::open_existing(&store_dir)?;
            let mut count = 0;
            for id in store.cert_ids()? {
                if store.read_meta(&id).is_ok_and(|m| m.acme.is_some_and(|a| a.on_demand)) {
                    count += 1;
                }
            }
            let state = store.state();
            let listeners: Vec<String> = on_demand
                .into_iter()
                .filter(|l| state.listeners.get(l).is_some_and(|s| !s.assigned.is_empty()))
                .collect();
            Ok((count, listeners))
        })
        .await?;
        if count >= max {
            return Ok((Outcome::Deferred("max_certificates"), None));
        }
        let params =
            RequestParams { hostnames: vec![name.to_owned()], listeners, on_demand: true, ..RequestParams::default() };
        let responder =
            Responder { challenges: self.challenges.clone(), on_disk: false, check: Vec::new(), cluster: tokens };
        let log = |line: &str| tracing::info!(target: "acme", "{line}");
        let obtained = request(acme, dir, &params, &responder, &log).await?;
        let (store_dir, id) = (dir.to_owned(), obtained.id.clone());
        let entry = blocking(move || Ok(Store::open_existing(&store_dir)?.read_cert(&id)?)).await?;
        let key = crate::snapshot::certified_key(&entry, false)
            .map_err(|e| anyhow!("{}: {e}", obtained.id))
            .context("the issued certificate cannot be served")?;
        Ok((Outcome::Issued(obtained.action), Some(key)))
    }
}

fn on_demand_listeners(config: &Config) -> Vec<String> {
    config.listeners.iter().filter(|l| l.on_demand).map(|l| l.name.clone()).collect()
}

fn count(result: &'static str) {
    metrics::counter!(crate::metrics::names::ACME_ON_DEMAND, crate::metrics::names::RESULT => result).increment(1);
}

/// `GET <ask>?domain=<name>` over plain HTTP/1.1: the status code.
async fn ask(url: &config::AskUrl, name: &str) -> Result<u16> {
    use http_body_util::{BodyExt, Empty};
    let go = async {
        let tcp = tokio::net::TcpStream::connect(&url.authority)
            .await
            .with_context(|| format!("cannot connect to {}", url.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get(url.path_for(name))
            .header(hyper::header::HOST, &url.authority)
            .header(hyper::header::USER_AGENT, concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<bytes::Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        // Only the status counts; the body is read (bounded) so the connection closes cleanly.
        let _ = http_body_util::Limited::new(resp.into_body(), 4096).collect().await;
        Ok::<_, anyhow::Error>(status)
    };
    tokio::time::timeout(ASK_TIMEOUT, go).await.map_err(|_| anyhow!("no answer within {ASK_TIMEOUT:?}"))?
}
