//! `portcullis run`: starts the data plane and the admin listener from a first snapshot,
//! reloads on SIGHUP, and drains on SIGTERM/SIGINT.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow};
use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::Config;
use crate::snapshot::{self, EntryCache, Publisher, Reader, Snapshot, TlsShared};
use crate::store::Store;

/// Where the daemon's inputs are, for reloads.
#[derive(Clone)]
pub struct Inputs {
    pub config_path: Option<PathBuf>,
    pub store_override: Option<PathBuf>,
}

impl Inputs {
    fn load(&self) -> Result<(Config, PathBuf)> {
        let config = Config::load(self.config_path.as_deref())?;
        let store = self.store_override.clone().unwrap_or_else(|| config.store_dir.clone());
        Ok((config, store))
    }
}

/// Builds the snapshot: from every entry (`changes` = `None`: the first build and
/// SIGHUP), or after `changes` (`Ok(None)`: nothing changed, nothing to publish).
fn build(
    config: &Config,
    store_dir: &std::path::Path,
    shared: &TlsShared,
    generation: u64,
    cache: &std::sync::Mutex<EntryCache>,
    changes: Option<&snapshot::Changes>,
) -> Result<Option<Snapshot>> {
    // The lock is held only while reading, so CLI writers are never blocked for long.
    // Only the first build may create the store; later ones need it to exist.
    let store = if generation == 1 { Store::open_or_create(store_dir)? } else { Store::open_existing(store_dir)? };
    let mut cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let snapshot = match changes {
        None => Some(snapshot::build_cached(config, &store, shared, &mut cache).map_err(|e| anyhow!(e))?),
        Some(c) => snapshot::rebuild(config, &store, shared, &mut cache, c).map_err(|e| anyhow!(e))?,
    };
    for p in snapshot.iter().flat_map(|s| &s.problems) {
        tracing::error!(problem = %p, "store problem");
    }
    Ok(snapshot)
}

/// What a reload did.
enum Reloaded {
    /// A new snapshot serves; the configuration it was built from.
    Published(Box<Config>),
    /// Nothing a snapshot holds changed.
    Unchanged,
    Failed,
}

/// How often the daemon rebuilds even without events.
const RESCAN: std::time::Duration = std::time::Duration::from_secs(60);

/// The accept loops running, by listener and address, so a reload can open new
/// addresses and close removed ones (their connections drain on their own).
struct Binds {
    active: HashMap<(String, SocketAddr), (CancellationToken, tokio::task::JoinHandle<()>)>,
    /// Plain-HTTP listeners ([http] listen and [acme] http_listen), by address.
    http: HashMap<SocketAddr, (CancellationToken, tokio::task::JoinHandle<()>)>,
    challenges: crate::acme::Challenges,
    limits: HashMap<String, Limit>,
}

/// A listener's `max_connections`: a semaphore whose size follows the configuration.
struct Limit {
    sem: Arc<Semaphore>,
    /// Permits in existence (free and held).
    total: Arc<std::sync::atomic::AtomicUsize>,
    /// A decrease waits for connections to end, then forgets their permits.
    shrinking: Option<tokio::task::JoinHandle<()>>,
}

impl Limit {
    fn new(n: usize) -> Self {
        Self { sem: Arc::new(Semaphore::new(n)), total: Arc::new(n.into()), shrinking: None }
    }

    fn resize(&mut self, wanted: usize) {
        // An unfinished decrease gives back what it collected so far.
        if let Some(h) = self.shrinking.take() {
            h.abort();
        }
        let total = self.total.load(Ordering::SeqCst);
        if wanted > total {
            self.sem.add_permits(wanted - total);
            self.total.store(wanted, Ordering::SeqCst);
        } else if wanted < total {
            let n = total - wanted;
            let (sem, tot) = (Arc::clone(&self.sem), Arc::clone(&self.total));
            self.shrinking = Some(tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX)).await {
                    p.forget();
                    tot.fetch_sub(n, Ordering::SeqCst);
                }
            }));
        }
    }
}

/// Stops the accept loops whose key is no longer wanted and waits until each has closed
/// its socket (so the address can be bound again at once, by another listener too);
/// returns their keys.
async fn stop_unwanted<K: Clone + Eq + std::hash::Hash>(
    running: &mut HashMap<K, (CancellationToken, tokio::task::JoinHandle<()>)>,
    wanted: impl Fn(&K) -> bool,
) -> Vec<K> {
    let removed: Vec<K> = running.keys().filter(|k| !wanted(k)).cloned().collect();
    for key in &removed {
        if let Some((token, handle)) = running.remove(key) {
            token.cancel();
            let _ = handle.await;
        }
    }
    removed
}

impl Binds {
    /// The plain-HTTP listeners follow the configuration like the TLS ones.
    async fn apply_http(
        &mut self,
        config: &Config,
        snapshot: &Reader,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        starting: bool,
    ) -> Result<()> {
        let wanted = config.plain_http();
        for addr in stop_unwanted(&mut self.http, |a| wanted.contains(a)).await {
            tracing::info!(%addr, "stopped plain-HTTP listener (removed from the configuration)");
        }
        for addr in wanted {
            if self.http.contains_key(&addr) {
                continue;
            }
            let tcp = match crate::http::bind_tcp(addr) {
                Ok(t) => t,
                Err(e) if starting => {
                    return Err(anyhow!("[http] listen / [acme] http_listen: cannot bind {addr}: {e}"));
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot bind the plain-HTTP listener");
                    continue;
                }
            };
            tracing::info!(%addr, "listening (plain HTTP: ACME HTTP-01, redirect to https)");
            if starting {
                eprintln!("listening: ACME HTTP-01 and redirect to https on http://{addr}");
            }
            let token = shutdown.child_token();
            let handle = tokio::spawn(crate::proxy::redirect_loop(
                tcp,
                self.challenges.clone(),
                {
                    let snapshot = snapshot.clone();
                    move || snapshot.load().redirect_port
                },
                tracker.clone(),
                token.clone(),
            ));
            self.http.insert(addr, (token, handle));
        }
        Ok(())
    }

    /// Binds what `config` lists and is not yet bound, and stops what it no longer lists.
    /// At start a bind failure is fatal; on reload it is logged and the rest applies.
    async fn apply(
        &mut self,
        config: &Config,
        snapshot: &Reader,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        starting: bool,
    ) -> Result<()> {
        let wanted: Vec<(String, SocketAddr)> =
            config.listeners.iter().flat_map(|l| l.bind.iter().map(|a| (l.name.clone(), *a))).collect();
        for key in stop_unwanted(&mut self.active, |k| wanted.contains(k)).await {
            tracing::info!(listener = %key.0, addr = %key.1, "stopped listening (removed from the configuration)");
        }
        // Between the TLS removals and the TLS binds: an address can move either way.
        self.apply_http(config, snapshot, tracker, shutdown, starting).await?;
        for l in &config.listeners {
            let entry = self.limits.entry(l.name.clone()).or_insert_with(|| Limit::new(l.max_connections));
            entry.resize(l.max_connections);
            let limit = Arc::clone(&entry.sem);
            for addr in &l.bind {
                let key = (l.name.clone(), *addr);
                if self.active.contains_key(&key) {
                    continue;
                }
                let tcp = match crate::http::bind_tcp(*addr) {
                    Ok(t) => t,
                    Err(e) if starting => return Err(anyhow!("listener {}: cannot bind {addr}: {e}", l.name)),
                    Err(e) => {
                        tracing::error!(listener = %l.name, %addr, error = %e, "cannot bind");
                        continue;
                    }
                };
                tracing::info!(listener = %l.name, %addr, "listening (https)");
                if starting {
                    eprintln!("listening: {} on https://{}", l.name, tcp.local_addr().unwrap_or(*addr));
                }
                let token = shutdown.child_token();
                let handle = tokio::spawn(crate::proxy::accept_loop(
                    tcp,
                    l.name.as_str().into(),
                    snapshot.clone(),
                    limit.clone(),
                    tracker.clone(),
                    token.clone(),
                ));
                self.active.insert(key, (token, handle));
            }
        }
        Ok(())
    }
}

/// Rebuilds the snapshot off the async workers and publishes it if it validates; on
/// error the last good snapshot keeps serving. Returns the configuration it applied.
async fn reload(
    inputs: &Inputs,
    shared: &TlsShared,
    cache: &Arc<std::sync::Mutex<EntryCache>>,
    publisher: &Publisher,
    reloads: &ArcSwap<crate::ops::views::ReloadStatus>,
    generation: u64,
    (why, changes): (&str, Option<snapshot::Changes>),
) -> Reloaded {
    let (inputs, shared, cache) = (inputs.clone(), shared.clone(), Arc::clone(cache));
    let started = std::time::Instant::now();
    let rebuilt = tokio::task::spawn_blocking(move || {
        inputs.load().and_then(|(config, store)| {
            Ok((build(&config, &store, &shared, generation, &cache, changes.as_ref())?, config))
        })
    })
    .await
    .unwrap_or_else(|e| Err(anyhow!("reload task failed: {e}")));
    match rebuilt {
        Ok((None, _)) => {
            // A successful load all the same: the reload metrics and status say the
            // daemon is watching (operators alert on a stale last success).
            crate::metrics::reload(true);
            let mut status = (**reloads.load()).clone();
            status.last_success = Some(crate::pki::rfc3339(time::OffsetDateTime::now_utc()));
            status.last_error = None;
            status.last_error_at = None;
            reloads.store(Arc::new(status));
            tracing::debug!(trigger = why, "nothing changed");
            Reloaded::Unchanged
        }
        Ok((Some(s), config)) => {
            publisher.publish(s);
            // On-demand certificates stored before this build are in it now.
            crate::sni::ondemand::forget_before(started);
            crate::metrics::reload(true);
            reloads.store(Arc::new(crate::ops::views::ReloadStatus {
                generation,
                last_success: Some(crate::pki::rfc3339(time::OffsetDateTime::now_utc())),
                ..Default::default()
            }));
            tracing::info!(generation, trigger = why, ms = started.elapsed().as_millis() as u64, "reloaded");
            Reloaded::Published(Box::new(config))
        }
        Err(e) => {
            crate::metrics::reload(false);
            let mut status = (**reloads.load()).clone();
            status.last_error = Some(format!("{e:#}").replace('\n', " "));
            status.last_error_at = Some(crate::pki::rfc3339(time::OffsetDateTime::now_utc()));
            reloads.store(Arc::new(status));
            tracing::error!(trigger = why, error = %format!("{e:#}"), "reload failed; still serving the last good snapshot");
            Reloaded::Failed
        }
    }
}

/// Runs until SIGTERM or SIGINT, then drains in-flight connections.
pub fn run(inputs: Inputs) -> Result<()> {
    // No transparent huge pages: with them each first touch of an allocator arena makes
    // 2 MiB resident. mimalloc is built not to ask for them (`no_thp`); this covers
    // kernels in THP "always" mode, which would use them unasked. Peak RSS under the load
    // test 32.9 -> 20.8 MB, rates unchanged (docs/PERFORMANCE.md). The flag belongs to
    // the process and is checked at fault time.
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "could not disable transparent huge pages");
    }
    let (config, store_dir) = inputs.load()?;
    fd_budget(&config);
    // One worker: a current-thread runtime, without the work-stealing machinery.
    let mut rt = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    rt.enable_all().thread_name("portcullis-worker");
    if config.worker_threads > 1 {
        rt.worker_threads(config.worker_threads);
    }
    let rt = rt.build().context("starting the runtime")?;
    rt.block_on(serve(inputs, config, store_dir))
}

/// File descriptors: the soft limit is raised to the hard one (the soft default of 1024
/// is below one listener's default `max_connections`). Every proxied connection needs
/// two (client and upstream); when the listeners' caps together could use more than the
/// limit allows, one busy listener could take the descriptors the others (and the admin
/// listener, the store, the jobs) need: that is said at start, with the numbers.
fn fd_budget(config: &Config) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "could not raise the open-file limit");
        }
    }
    let available = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let wanted: u64 = config.listeners.iter().map(|l| 2 * l.max_connections as u64).sum::<u64>()
        + admin::MAX_CONNECTIONS as u64
        + FD_RESERVE;
    if wanted > available {
        tracing::warn!(
            open_file_limit = available,
            needed = wanted,
            "the listeners' max_connections (two descriptors each) exceed the open-file limit: lower max_connections or raise LimitNOFILE, or a busy listener can starve the others"
        );
    }
}

/// Descriptors kept for everything but connections: store files, the watcher, the job
/// runner, logs, the ACME client.
const FD_RESERVE: u64 = 256;

async fn serve(inputs: Inputs, config: Config, store_dir: PathBuf) -> Result<()> {
    // Buckets make the handshake duration a Prometheus histogram: fixed memory, where
    // the exporter's default summary keeps every sample until the next upkeep.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(crate::metrics::names::TLS_HANDSHAKE_DURATION.into()),
            crate::metrics::HANDSHAKE_BUCKETS,
        )
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let control = Control::start()?;
    {
        let handle = prometheus.clone();
        control.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
    crate::metrics::describe();
    let shared = TlsShared::new().map_err(|e| anyhow!("TLS session tickets: {e}"))?;
    let cache = Arc::new(std::sync::Mutex::new(EntryCache::default()));
    let first = build(&config, &store_dir, &shared, 1, &cache, None)?.ok_or_else(|| anyhow!("no first snapshot"))?;
    crate::metrics::reload(true);
    let (publisher, snapshot) = Publisher::new(first);
    let reloads = Arc::new(ArcSwap::from_pointee(crate::ops::views::ReloadStatus {
        generation: 1,
        last_success: Some(crate::pki::rfc3339(time::OffsetDateTime::now_utc())),
        ..Default::default()
    }));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    // File changes and a periodic rescan (for file systems that miss events) reload
    // the same way as SIGHUP. Watching starts before the listeners accept, so a change
    // made as soon as they do is seen (events wait in the channel until the loop).
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let mut watch = match crate::watch::start(&store_dir, inputs.config_path.as_deref(), changed_tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; reloading on SIGHUP and every 60 s only");
            None
        }
    };

    // The ACME challenges answered on the plain-HTTP listeners.
    let challenges = crate::acme::Challenges::new(Some(crate::acme::challenge_dir(&store_dir)));
    crate::sni::alpn::set_dir(crate::acme::challenge_dir(&store_dir).join("alpn"));
    let mut binds =
        Binds { active: HashMap::new(), http: HashMap::new(), challenges: challenges.clone(), limits: HashMap::new() };
    binds.apply(&config, &snapshot, &tracker, &shutdown, true).await?;
    let (config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config.clone()));
    // Listeners with `on_demand` ask this; [acme.on_demand] (read at each use) decides.
    crate::sni::ondemand::install(Box::new(crate::acme::ondemand::OnDemand::new(
        config_rx.clone(),
        store_dir.clone(),
        challenges.clone(),
        control.handle.clone(),
    )));
    // Admin jobs by file drop: [jobs] dir as configured at start.
    let recent_jobs: crate::jobs::Recent = Arc::default();
    let _jobs_watch = match &config.jobs_dir {
        None => None,
        Some(dir) => {
            crate::jobs::ensure_dirs(dir).with_context(|| format!("[jobs] dir {}", dir.display()))?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let watch = crate::watch::start_jobs(&dir.join(crate::jobs::INCOMING), tx)
                .map_err(|e| tracing::warn!(error = %e, "jobs: watching unavailable; scanning every 5 s"))
                .ok();
            eprintln!("jobs: watching {}", dir.join(crate::jobs::INCOMING).display());
            control.spawn(crate::jobs::runner(
                dir.clone(),
                store_dir.clone(),
                config_rx.clone(),
                challenges.clone(),
                Arc::clone(&recent_jobs),
                rx,
                shutdown.clone(),
            ));
            watch
        }
    };
    let kick_renewer = Arc::new(tokio::sync::Notify::new());
    let cluster_status = Arc::new(crate::cluster::Status::default());
    match config.cluster.clone() {
        None => control.spawn(crate::acme::renewer(
            store_dir.clone(),
            config_rx,
            challenges.clone(),
            Arc::clone(&kick_renewer),
            None,
            shutdown.clone(),
        )),
        Some(cfg) => {
            // Serving never waits for etcd: the store copy is served as it is, and the
            // sync, the lease and the renewer start once etcd can be reached.
            let (status, dir, challenges, kick, shutdown) = (
                Arc::clone(&cluster_status),
                store_dir.clone(),
                challenges.clone(),
                Arc::clone(&kick_renewer),
                shutdown.clone(),
            );
            eprintln!("cluster: node {} of {} on etcd {}", cfg.node, cfg.prefix, cfg.endpoints.join(","));
            control.spawn(async move {
                let cluster = loop {
                    match crate::cluster::Cluster::connect(&cfg).await {
                        Ok(c) => break c,
                        Err(e) => tracing::warn!(error = %e, "cluster: cannot connect; serving the store copy"),
                    }
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => return,
                    }
                };
                challenges.set_remote(cluster.clone());
                tokio::spawn(crate::cluster::sync(cluster.clone(), dir.clone(), Arc::clone(&status), shutdown.clone()));
                tokio::spawn(crate::cluster::membership(cluster.clone(), Arc::clone(&status), shutdown.clone()));
                let role = crate::acme::ClusterRole { cluster, status };
                crate::acme::renewer(dir, config_rx, challenges, kick, Some(role), shutdown).await;
            });
        }
    }
    let admin_tcp = admin::bind(config.admin_listen)
        .with_context(|| format!("[admin] listen: cannot bind {}", config.admin_listen))?;
    eprintln!("listening: admin on http://{} (/status, /status.json, /metrics, /healthz)", config.admin_listen);
    control.spawn(admin::serve(
        admin_tcp,
        prometheus,
        snapshot.clone(),
        Arc::clone(&reloads),
        Arc::clone(&recent_jobs),
        config.cluster.as_ref().map(|c| (c.node.clone(), Arc::clone(&cluster_status))),
        shutdown.clone(),
    ));

    crate::notify::ready(&format!("serving {} listener(s)", config.listeners.len()));
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.reset();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut generation = 1;
    // The store changed since the renewer last looked (it is told at the next rescan:
    // a deleted [[acme.certificate]] or a failure `acme renew` recorded).
    let mut store_changed = false;
    loop {
        let (why, changes) = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => ("SIGHUP", None),
            Some(first) = changed.recv() => {
                let mut all = first;
                while let Ok(more) = changed.try_recv() {
                    all.add(more);
                }
                ("file change", Some(all))
            }
            _ = rescan.tick() => ("periodic rescan", Some(snapshot::Changes { everything: true, paths: Vec::new() })),
        };
        // systemd waits for READY=1 after RELOADING=1 (`systemctl reload` returns then).
        crate::notify::reloading();
        if let Some(w) = watch.as_mut() {
            w.refresh(); // a conf.d/ created since
        }
        let next = generation + 1;
        let reloaded = reload(&inputs, &shared, &cache, &publisher, &reloads, next, (why, changes)).await;
        if let Reloaded::Published(config) = reloaded {
            generation = next;
            store_changed = true;
            let _ = binds.apply(&config, &snapshot, &tracker, &shutdown, false).await;
            // The job runner and the ACME renewer see the new configuration (the renewer
            // acts only when [acme], [alerts] or the listeners changed).
            let _ = config_tx.send(Arc::new(*config));
        }
        crate::notify::ready(&format!("snapshot generation {generation}"));
        if why == "SIGHUP" || (why != "file change" && store_changed) {
            kick_renewer.notify_one();
            store_changed = false;
        }
    }
    crate::notify::stopping();
    eprintln!("shutting down: draining connections (up to {}s)", config.drain_timeout.as_secs());
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(config.drain_timeout, tracker.wait()).await.is_err() {
        tracing::warn!("drain timeout: closing the remaining connections");
    }
    control.stop();
    Ok(())
}

/// The control plane's runtime: the ACME renewer, the job runner, the admin listener and
/// the metrics upkeep run on one thread of their own, so a slow renewal or a burst of
/// jobs never takes turns with connections on the data plane's workers. Both planes meet
/// only through the store (and the snapshot it becomes), channels and the challenge map.
struct Control {
    handle: tokio::runtime::Handle,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Control {
    fn start() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("portcullis-control")
            .build()
            .context("starting the control runtime")?;
        let handle = rt.handle().clone();
        let stop = CancellationToken::new();
        let until = stop.clone();
        let thread = std::thread::Builder::new()
            .name("portcullis-control".into())
            .spawn(move || {
                rt.block_on(until.cancelled());
                // Store work in flight (spawn_blocking) gets a moment to finish.
                rt.shutdown_timeout(std::time::Duration::from_secs(5));
            })
            .context("starting the control thread")?;
        Ok(Self { handle, stop, thread: Some(thread) })
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.handle.spawn(task);
    }

    /// Ends the control tasks (they have seen the shutdown already) and waits for them.
    fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Control {
    /// A start that failed half-way leaves no thread waiting forever.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
