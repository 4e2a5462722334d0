//! The command line (DESIGN.md, "Command line"): argument parsing, dispatch to [`ops`],
//! and the human and `--json` renderings. Exit status: 0 success, 1 user error (one line
//! on stderr naming the flag, file or id), 2 usage error (from clap).

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Config;
use crate::ops::{self, CertView, Report, RequestView, Shown};
use crate::pki::{self, KeyType};
use crate::store::Store;
use action::Done;

pub mod action;
pub mod args;
mod cluster;

pub use args::{AcmeCommand, CertCommand, Cli, Command, JobCommand, NewArgs};

/// Parses the command line, runs it and maps the outcome to an exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line, whatever the chain of causes.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("{}: {msg}", paint("error", "31"));
            ExitCode::from(1)
        }
    }
}

struct Ctx {
    config: Config,
    store_dir: PathBuf,
    json: bool,
}

impl Ctx {
    fn open_store(&self) -> Result<Store> {
        let mut store = Store::open(&self.store_dir)?;
        for note in store.take_notes() {
            eprintln!("note: {note}");
        }
        Ok(store)
    }

    /// For commands that only look: nothing is written, not even a clean-up.
    fn read_store(&self) -> Result<Store> {
        Ok(Store::open_read_only(&self.store_dir)?)
    }

    /// After a command changed the store: say which one, so a forgotten `--config` shows.
    fn changed(&self) {
        eprintln!("{}: store {}", paint("note", "36"), self.store_dir.display());
    }
}

/// Where the configuration comes from: `--config`, else `$PORTCULLIS_CONFIG`, else
/// `/etc/portcullis/portcullis.toml` when it exists, else the built-in defaults (`None`).
fn discover_config(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("PORTCULLIS_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)).or_else(|| {
        let system = PathBuf::from(SYSTEM_CONFIG);
        system.is_file().then_some(system)
    })
}

/// The configuration a packaged install reads when no other is named.
const SYSTEM_CONFIG: &str = "/etc/portcullis/portcullis.toml";

/// Commands other than the daemon end quietly when their reader goes away
/// (`portcullis cert list | head`), as command-line tools do, instead of failing on
/// EPIPE. The daemon keeps SIGPIPE ignored: a closed client socket must be an error
/// on that connection, not the end of the process.
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: called at start, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if !matches!(cli.command, None | Some(Command::Run)) {
        default_sigpipe();
    }
    if let Some(Command::Completions { shell }) = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "portcullis", &mut io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    let config_path = discover_config(cli.config.clone());
    let (config, mut errors) = Config::load_all(config_path.as_deref());
    if !errors.is_empty() {
        return match cli.command {
            // Every problem, each with file, line and key.
            Some(Command::CheckConfig { .. }) => {
                for e in &errors {
                    eprintln!("{}: {e}", paint("error", "31"));
                }
                Ok(ExitCode::from(1))
            }
            // The running daemon still serves its last good configuration: show it.
            Some(Command::Status) => status_of_broken(&config, &errors, cli.json),
            _ => Err(errors.swap_remove(0).into()),
        };
    }
    let store_dir = cli.store.clone().unwrap_or_else(|| config.store_dir.clone());
    let ctx = Ctx { config, store_dir, json: cli.json };
    match cli.command {
        None | Some(Command::Run) => {
            init_tracing();
            crate::daemon::run(crate::daemon::Inputs { config_path, store_override: cli.store })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Init) => {
            let existed = ctx.store_dir.join("state.toml").is_file();
            let mut store = Store::open_or_create(&ctx.store_dir)?;
            for note in store.take_notes() {
                eprintln!("{}: {note}", paint("note", "36"));
            }
            if existed {
                println!("store {} exists already; nothing changed", store.root().display());
            } else {
                println!("initialised store {}", store.root().display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Status) => status(&ctx),
        Some(Command::CheckConfig { strict }) => check_config(&ctx, strict),
        Some(Command::Cert(cmd)) => cert(&ctx, *cmd),
        Some(Command::Acme(cmd)) => acme(&ctx, cmd),
        Some(Command::Cluster(cmd)) => cluster::command(&ctx, cmd),
        Some(Command::Completions { .. }) => unreachable!("handled before loading the configuration"),
        Some(Command::Job(JobCommand::Submit { file, wait, timeout })) => {
            let source = ctx.config.source.as_ref().map_or("the configuration".into(), |p| p.display().to_string());
            let dir = ctx.config.jobs_dir.clone().ok_or_else(|| anyhow::anyhow!("{source}: no [jobs] dir"))?;
            let name = crate::jobs::submit(&dir, &file).map_err(|e| anyhow::anyhow!(e))?;
            eprintln!("submitted job {name} to {}", dir.join(crate::jobs::INCOMING).display());
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let Some(result) = crate::jobs::wait(&dir, &name, std::time::Duration::from_secs(timeout)) else {
                anyhow::bail!(
                    "job {name}: no result after {timeout} s; is the daemon running with [jobs] dir {}?",
                    dir.display()
                );
            };
            if ctx.json {
                print_json(&result)?;
            } else {
                for m in &result.messages {
                    println!("note: {m}");
                }
                for w in &result.warnings {
                    println!("warning: {w}");
                }
                match &result.error {
                    Some(e) => println!("job {name} failed: {e}"),
                    None => println!("job {name} done: {}", serde_json::to_string(&result.outputs)?),
                }
            }
            Ok(if result.status == crate::jobs::JobStatus::Done { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn acme(ctx: &Ctx, cmd: AcmeCommand) -> Result<ExitCode> {
    let policy = crate::acme::Policy::of(ctx.config.acme.as_ref());
    if let AcmeCommand::Status = cmd {
        let store = ctx.read_store()?;
        let mut views = crate::acme::policy::store_views(&store, &policy, OffsetDateTime::now_utc())?;
        // Configured certificates never issued yet (an order failing, or not tried yet).
        for c in ctx.config.acme.iter().flat_map(|a| &a.certificates) {
            if !views.iter().any(|v| crate::config::same_names(&v.hostnames, &c.hostnames)) {
                views.push(crate::acme::AcmeView {
                    id: String::new(),
                    friendly_name: c.name.clone().unwrap_or_else(|| c.hostnames[0].clone()),
                    hostnames: c.hostnames.clone(),
                    not_after: String::new(),
                    status: crate::acme::Status::NotIssued,
                    renew_at: String::new(),
                    error_at: String::new(),
                    next_attempt: None,
                    last_attempt: None,
                    last_result: Some("see the daemon's log".into()),
                    failures: 0,
                });
            }
        }
        if ctx.json {
            print_json(&views)?;
        } else {
            let header = ["ID", "HOSTNAMES", "EXPIRES", "STATUS", "RENEW AT", "LAST ATTEMPT", "RESULT"];
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let dash = |s: &str| if s.is_empty() { "-".to_owned() } else { s.to_owned() };
                    vec![
                        dash(&v.id),
                        v.hostnames.join(","),
                        dash(&v.not_after),
                        v.status.to_string(),
                        dash(v.next_attempt.as_deref().unwrap_or(&v.renew_at)),
                        v.last_attempt.clone().unwrap_or_else(|| "-".into()),
                        v.last_result.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(&header, &rows, None);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let source = ctx.config.source.as_ref().map_or("the configuration".into(), |p| p.display().to_string());
    let acme_config = ctx.config.acme.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{source}: no [acme] section; set directory, contact and agree_tos = true (see config/portcullis.toml)"
        )
    })?;
    // Validate before touching the network.
    let (params, renew_target) = match &cmd {
        AcmeCommand::Request { hostnames, key, name, listeners, replace, challenge } => {
            let params = action::acme_request(
                hostnames,
                key.as_deref(),
                name.clone(),
                listeners,
                *replace,
                challenge.as_deref(),
                &ctx.config,
            )?;
            (Some(params), None)
        }
        AcmeCommand::Renew { id, force } => (None, Some((id.clone(), *force))),
        AcmeCommand::Status => unreachable!("handled above"),
    };
    let store = ctx.open_store()?;
    if let Some(p) = params.as_ref().filter(|p| !p.replace) {
        // Before binding port 80 and talking to the CA.
        let name = p.name.clone().unwrap_or_else(|| p.hostnames[0].clone());
        crate::acme::refuse_dropped_names(&store, &name, &p.hostnames)?;
    }
    let mut store_dir = store.root().to_owned();
    drop(store);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // On a cluster the order runs on a scratch copy and every node answers its challenges.
    let cluster = match &ctx.config.cluster {
        Some(c) => Some(rt.block_on(async {
            let cluster = crate::cluster::Cluster::connect(c).await?;
            let mut work = crate::cluster::Work::begin(&cluster, &ctx.store_dir).await?;
            work.exclusive = false;
            let lease = cluster.grant(300).await?;
            Ok::<_, crate::cluster::Error>((cluster, work, lease))
        })?),
        None => None,
    };
    if let Some((_, work, _)) = &cluster {
        store_dir = work.dir().to_owned();
    }
    let quiet = ctx.json;
    let progress = move |line: &str| {
        if !quiet {
            eprintln!("acme: {line}");
        }
    };
    let outcomes: Result<Vec<crate::acme::Obtained>> = rt.block_on(async {
        let responder = match &cluster {
            Some((c, _, lease)) => crate::acme::Responder {
                challenges: crate::acme::Challenges::new(None),
                on_disk: false,
                check: Vec::new(),
                cluster: Some(crate::acme::ClusterTokens { cluster: c.clone(), lease: *lease, fence: None }),
            },
            None => cli_responder(acme_config, &store_dir).await?,
        };
        match (params, renew_target) {
            (Some(p), _) => Ok(vec![crate::acme::request(acme_config, &store_dir, &p, &responder, &progress).await?]),
            (None, Some((Some(id), force))) => {
                Ok(vec![crate::acme::renew(acme_config, &store_dir, &id, force, &responder, &progress).await?])
            }
            (None, Some((None, force))) => {
                let ids: Vec<String> = {
                    let store = Store::open(&store_dir)?;
                    crate::acme::policy::store_views(&store, &policy, OffsetDateTime::now_utc())?
                        .into_iter()
                        .map(|v| v.id)
                        .collect()
                };
                if ids.is_empty() {
                    progress("no ACME certificates in the store");
                }
                // Every due certificate gets its attempt, even after one fails.
                let mut out = Vec::new();
                let mut failed = Vec::new();
                for id in ids {
                    match crate::acme::renew(acme_config, &store_dir, &id, force, &responder, &progress).await {
                        Ok(o) => out.push(o),
                        Err(e) => {
                            eprintln!("{}: {e:#}", paint("error", "31"));
                            failed.push(id);
                        }
                    }
                }
                if failed.is_empty() {
                    Ok(out)
                } else {
                    for o in &out {
                        println!(
                            "{} {} ({}): serial {}, valid until {}",
                            o.action, o.id, o.friendly_name, o.serial, o.not_after
                        );
                    }
                    Err(anyhow::anyhow!("renewal failed for {}", failed.join(", ")))
                }
            }
            (None, None) => unreachable!("one of them is set"),
        }
    });
    if let Some((c, work, _)) = cluster {
        // Failures are recorded too (the renewal status), so commit either way.
        rt.block_on(work.commit(&c, None, &ctx.store_dir))?;
    }
    let outcomes = outcomes?;
    if outcomes.iter().any(|o| o.action != crate::acme::Action::Unchanged) {
        ctx.changed();
    }
    if ctx.json {
        print_json(&outcomes)?;
    } else {
        for o in &outcomes {
            println!(
                "{} {} ({}) for {}: serial {}, valid until {}",
                o.action,
                o.id,
                o.friendly_name,
                o.hostnames.join(", "),
                o.serial,
                o.not_after
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The CLI answers HTTP-01 itself on every `[acme] http_listen` address it can bind (no
/// daemon running); where the port is taken, a running daemon answers from the token
/// files this process publishes in the store, which is checked before each challenge.
async fn cli_responder(acme: &crate::config::Acme, store_dir: &std::path::Path) -> Result<crate::acme::Responder> {
    let challenges = crate::acme::Challenges::new(Some(crate::acme::challenge_dir(store_dir)));
    let mut check = Vec::new();
    for addr in &acme.http_listen {
        // Bound as the daemon binds (IPv6 sockets v6-only), so "in use" means the same.
        match crate::http::bind_tcp(*addr) {
            Ok(tcp) => {
                eprintln!("acme: answering HTTP-01 challenges on http://{addr} during the order");
                let tracker = tokio_util::task::TaskTracker::new();
                let never = tokio_util::sync::CancellationToken::new();
                // Only the challenges matter here; other requests get the default redirect.
                tokio::spawn(crate::proxy::redirect_loop(tcp, challenges.clone(), || 443, tracker, never));
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                eprintln!("acme: http://{addr} is in use (a running daemon?); publishing the challenges for it");
                check.push(*addr);
            }
            Err(e) => anyhow::bail!("acme.http_listen {addr}: cannot bind: {e}"),
        }
    }
    Ok(crate::acme::Responder { challenges, on_disk: true, check, cluster: None })
}

fn cert(ctx: &Ctx, cmd: CertCommand) -> Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    match cmd {
        CertCommand::List { trust: true, wide, .. } => {
            let store = ctx.open_store()?;
            let (trust, problems) = ops::list_trust(&store, now)?;
            warn_all("skipped unreadable trust certificate", &problems);
            if ctx.json { print_json(&trust)? } else { print_trust_table(&trust, wide) }
        }
        CertCommand::List { requests: false, wide, filter, limit, .. } => {
            let store = ctx.open_store()?;
            let filter = ops::ListFilter { text: filter, limit, offset: 0 };
            let policy = crate::acme::Policy::of(ctx.config.acme.as_ref());
            let (page, problems) = ops::list_certs(&store, now, &policy, &filter)?;
            warn_all("skipped unreadable entry", &problems);
            if page.rows.len() < page.total {
                eprintln!("note: {} of {} certificates shown ({} matched)", page.rows.len(), page.total, page.matched);
            }
            if ctx.json {
                print_json(&page.rows)?
            } else {
                print_cert_table(&page.rows, wide);
                // The listeners' lines need the whole snapshot (every entry's key): a
                // filtered listing of 100,000 would pay for it on every query.
                if filter.text.is_none() && filter.limit.is_none() {
                    print_listener_lines(ctx, &store);
                }
            }
        }
        CertCommand::List { requests: true, wide, .. } => {
            let store = ctx.open_store()?;
            let (requests, problems) = ops::list_requests(&store)?;
            warn_all("skipped unreadable entry", &problems);
            if ctx.json { print_json(&requests)? } else { print_request_table(&requests, wide) }
        }
        CertCommand::Show { id, csr: true, .. } => {
            let store = ctx.open_store()?;
            print!("{}", ops::show_csr(&store, &id)?);
        }
        CertCommand::Show { id, pem, csr: false } => {
            let store = ctx.open_store()?;
            match ops::show(&store, &id, now)? {
                Shown::Cert(_, text) | Shown::Request(_, text) | Shown::Trust(_, text) if pem => print!("{text}"),
                Shown::Cert(view, _) if ctx.json => print_json(&view)?,
                Shown::Request(view, _) if ctx.json => print_json(&view)?,
                Shown::Trust(view, _) if ctx.json => print_json(&view)?,
                Shown::Trust(view, _) => print_trust(&view),
                Shown::Cert(view, _) => print_cert(&view),
                Shown::Request(view, text) => print_request(&view, &text),
            }
        }
        CertCommand::Which { hostname, listener } => {
            let store = ctx.open_store()?;
            let w = ops::which(&store, &ctx.config, &hostname, listener.as_deref())?;
            if ctx.json {
                print_json(&w)?;
            } else {
                let shown = if w.hostname.is_empty() { "(no SNI)".to_owned() } else { w.hostname.clone() };
                match (&w.id, &w.friendly_name) {
                    (Some(id), Some(name)) => {
                        println!("{shown} on listener {}: {id} ({name}): {}", w.listener, w.reason)
                    }
                    _ => println!("{shown} on listener {}: no certificate: {}", w.listener, w.reason),
                }
                println!(
                    "  candidates: {}",
                    if w.candidates == "assigned" {
                        "the assigned certificates only"
                    } else {
                        "every certificate in the store (auto-selection)"
                    }
                );
                for o in &w.outranked {
                    println!("  {} also covers {shown}; the served one wins on: {}", o.id, o.lost_on);
                }
                for id in &w.not_assigned {
                    println!(
                        "  {id} covers {shown} but is not served on listener {l}: portcullis cert assign {id} --listener {l}",
                        l = w.listener
                    );
                }
            }
        }
        write => {
            let done = match &ctx.config.cluster {
                Some(c) => cluster::write(ctx, c, |store| {
                    action::cert(write, store, &ctx.config, &Notices).transpose().map_err(Into::into)
                })?,
                None => {
                    let mut store = ctx.open_store()?;
                    action::cert(write, &mut store, &ctx.config, &Notices).transpose()?
                }
            };
            if let Some(done) = done {
                print_done(ctx, &done)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The snapshot the daemon would build from `store` with this configuration.
fn build_snapshot(ctx: &Ctx, store: &Store) -> Result<crate::snapshot::Snapshot, crate::snapshot::Error> {
    crate::snapshot::TlsShared::new().and_then(|shared| crate::snapshot::build(&ctx.config, store, &shared))
}

fn status(ctx: &Ctx) -> Result<ExitCode> {
    let store = ctx.read_store()?;
    let s = ops::status(&store, &ctx.config, &build_snapshot(ctx, &store))?;
    if ctx.json {
        print_json(&s)?;
    } else {
        println!("Portcullis {} on {}", s.version, s.hostname);
        println!("store:        {}", s.store);
        match &ctx.config.source {
            Some(p) => println!("config:       {}", p.display()),
            None => println!("config:       built-in defaults"),
        }
        for l in &s.listeners {
            println!("listener:     {} on {}", l.name, l.bind.join(", "));
            println!("              {}; fallback {} ({})", l.candidates(), l.fallback, l.fallback_reason);
        }
        println!("certificates: {} ({} pending request(s))", s.certificates, s.pending_requests);
        println!("in use:");
        for u in &s.in_use {
            println!("  {:<24} {:<28} expires {}  sha256 {}", u.id, u.role, u.not_after, u.fingerprint_sha256);
        }
        for p in &s.problems {
            println!("problem:      {p}");
        }
        match &s.daemon {
            Some(d) => {
                let ok = d.reload.last_success.as_deref().unwrap_or("-");
                println!(
                    "daemon:       running (pid {}), snapshot generation {}, last reload ok at {ok}",
                    d.pid, d.reload.generation
                );
                if let (Some(err), Some(at)) = (&d.reload.last_error, &d.reload.last_error_at) {
                    println!("last error:   {at}: {err}");
                }
                for p in &d.problems {
                    println!("daemon problem: {p}");
                }
            }
            None => println!("daemon:       not answering on http://{}", ctx.config.admin_listen),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `portcullis status` while the configuration does not load: the errors, then what the
/// running daemon (found at the `[admin] listen` that could be read) still serves.
fn status_of_broken(config: &Config, errors: &[crate::config::Error], json: bool) -> Result<ExitCode> {
    let daemon = ops::views::query(config.admin_listen);
    if json {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        print_json(&serde_json::json!({ "config_errors": errors, "daemon": daemon }))?;
        return Ok(ExitCode::from(1));
    }
    for e in errors {
        println!("config error: {e}");
    }
    match daemon {
        Some(d) => {
            println!(
                "daemon:       running (pid {}), still serving snapshot generation {} (last good reload {})",
                d.pid,
                d.reload.generation,
                d.reload.last_success.as_deref().unwrap_or("-")
            );
            for l in &d.listeners {
                println!("listener:     {} on {}", l.name, l.bind.join(", "));
                println!("              {}; fallback {} ({})", l.candidates(), l.fallback, l.fallback_reason);
            }
            println!("certificates: {}", d.certificates.len());
            if let (Some(err), Some(at)) = (&d.reload.last_error, &d.reload.last_error_at) {
                println!("last error:   {at}: {err}");
            }
        }
        None => println!("daemon:       not answering on http://{}", config.admin_listen),
    }
    Ok(ExitCode::from(1))
}

fn check_config(ctx: &Ctx, strict: bool) -> Result<ExitCode> {
    let store = ctx.read_store()?;
    let policy = crate::acme::Policy::of(ctx.config.acme.as_ref());
    let (certs, mut problems) =
        ops::list_certs(&store, OffsetDateTime::now_utc(), &policy, &ops::ListFilter::default())?;
    let certs = certs.rows;
    let (_, bad_requests) = ops::list_requests(&store)?;
    problems.extend(bad_requests);
    // The snapshot the daemon would serve: handler options, keys, listeners.
    let snapshot = build_snapshot(ctx, &store);
    let status = ops::status(&store, &ctx.config, &snapshot)?;
    problems.extend(status.problems.iter().filter(|p| p.starts_with("state.toml")).cloned());
    let mut warnings = Vec::new();
    match snapshot {
        Ok(snapshot) => {
            let served = snapshot.served_ids();
            let mut served_warnings: Vec<String> = snapshot
                .certificates
                .iter()
                .filter(|c| served.contains(&*c.id))
                .flat_map(|c| c.warnings.iter().map(move |w| format!("{} (served): {w}", c.id)))
                .collect();
            problems.extend(snapshot.problems);
            warnings = snapshot.warnings;
            let mut permissions = snapshot.permissions;
            if strict {
                problems.append(&mut served_warnings);
                problems.append(&mut permissions);
            } else {
                warnings.append(&mut served_warnings);
                warnings.append(&mut permissions);
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    for w in &warnings {
        eprintln!("{}: {w}", paint("warning", "33"));
    }
    problems.sort();
    problems.dedup();
    for p in &problems {
        eprintln!("error: {p}");
    }
    if problems.is_empty() {
        println!(
            "ok: {} ({} certificate(s), store {})",
            ctx.config.source.as_ref().map_or("built-in configuration".into(), |p| p.display().to_string()),
            certs.len(),
            store.root().display()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

/// The daemon's log filter unless RUST_LOG says otherwise.
const DEFAULT_LOG: &str = "info,notify=warn,notify_debouncer_full=warn";

/// Logs for the daemon: one line per event on stderr; RUST_LOG overrides the level.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // notify reports at INFO every watch it cannot remove, which happens whenever a
    // watched entry is deleted: noise to an operator, so only its warnings show.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    use std::io::IsTerminal;
    let ansi = io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// The CLI's notices before slow steps: on stderr, on a terminal only.
struct Notices;

impl action::Notice for Notices {
    fn generating(&self, key: KeyType) {
        slow_key_notice(key);
    }

    fn decrypting(&self, files: usize) {
        // Password-based key derivation runs 100,000+ rounds per encrypted item.
        progress_line(&format!("decrypting and reading {files} file(s)..."));
    }
}

/// Tells what a store-changing `cert` command did: notes and warnings on stderr, then
/// the result (JSON with `--json`).
fn print_done(ctx: &Ctx, done: &Done) -> Result<()> {
    macro_rules! told {
        ($report:expr) => {{
            tell($report);
            if done.changed_store() {
                ctx.changed();
            }
            if ctx.json {
                return print_json(&$report.value);
            }
            &$report.value
        }};
    }
    match done {
        Done::Created(r) => {
            let v = told!(r);
            println!("created self-signed certificate {} ({})", v.id, v.friendly_name);
            print_cert(v);
        }
        Done::Requested(r) => {
            tell(r);
            ctx.changed();
            eprintln!(
                "created request {} ({}): give the CSR below to your certificate authority",
                r.value.request.id, r.value.request.friendly_name
            );
            if ctx.json { print_json(&r.value)? } else { print!("{}", r.value.csr_pem) }
        }
        Done::Imported(r) => {
            let v = told!(r);
            for t in &v.trust {
                let what = if t.added { "added to" } else { "already in" };
                println!("{} {what} the trust pool: {}", t.role, t.subject);
            }
            for c in &v.certificates {
                println!("imported certificate {} ({})", c.id, c.friendly_name);
                print_cert(c);
            }
        }
        Done::Exported(r) => {
            let v = told!(r);
            let key = match (v.includes_key, v.key_encrypted) {
                (true, true) => " and its encrypted private key",
                (true, false) => " and its UNENCRYPTED private key",
                _ => "",
            };
            println!("exported {} as {} to {}: {} certificate(s){key}", v.id, v.format, v.path, v.certificates);
        }
        Done::Replaced(r) => {
            let v = told!(r);
            if v.moved.is_empty() {
                println!("nothing moved from {} to {}", v.old, v.new);
            } else {
                println!("{} replaces {}: moved {}", v.new, v.old, v.moved.join(", "));
            }
        }
        Done::Assigned { on, report } => {
            let v = told!(report);
            if !v.changed.is_empty() {
                let verb = if *on { "now served on" } else { "no longer served on" };
                println!("{} {verb} listener(s): {}", v.id, v.changed.join(", "));
            }
        }
        Done::DefaultChanged { listener: Some(listener), report } => {
            let v = told!(report);
            println!("default certificate of listener {listener}: {} (was {})", v.id, v.previous);
        }
        Done::DefaultChanged { listener: None, report } => {
            let v = told!(report);
            println!("default certificate: {} (was {})", v.id, v.previous);
        }
        Done::Deleted(r) => {
            let v = told!(r);
            println!("deleted {} {}", v.kind, v.id);
        }
    }
    Ok(())
}

fn tell<T>(report: &Report<T>) {
    for n in &report.notes {
        eprintln!("{}: {n}", paint("note", "36"));
    }
    for w in &report.warnings {
        eprintln!("{}: {w}", paint("warning", "33"));
    }
}

/// A progress line on stderr for an operation that takes seconds; only on a terminal.
fn progress_line(text: &str) {
    use std::io::IsTerminal;
    if io::stderr().is_terminal() {
        eprintln!("{}", paint(text, "2"));
    }
}

/// RSA key generation takes seconds (RSA-4096: about 4 s here); say so.
fn slow_key_notice(key: KeyType) {
    if matches!(key, KeyType::Rsa3072 | KeyType::Rsa4096) {
        progress_line(&format!("generating a {key} key (this takes a few seconds)..."));
    }
}

/// `word` in an ANSI colour when stderr is a terminal and NO_COLOR is not set.
fn paint(word: &str, colour: &str) -> String {
    use std::io::IsTerminal;
    if io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        format!("\x1b[{colour}m{word}\x1b[0m")
    } else {
        word.to_owned()
    }
}

fn warn_all(what: &str, problems: &[String]) {
    for p in problems {
        eprintln!("warning: {what}: {p}");
    }
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).context("writing JSON")?;
    writeln!(out)?;
    Ok(())
}

fn print_cert(c: &CertView) {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let rows: [(&str, String); 18] = [
        ("id", c.id.clone()),
        ("friendly name", c.friendly_name.clone()),
        ("source", c.source.to_owned()),
        ("issued to", c.issued_to.clone()),
        ("issued by", c.issued_by.clone()),
        ("subject", c.subject.clone()),
        ("alternative names", c.sans.join(", ")),
        ("valid from", c.not_before.clone()),
        ("expires", format!("{} ({})", c.not_after, c.expiry)),
        ("key", c.key.clone()),
        ("signature", c.signature.clone()),
        ("serial", c.serial.clone()),
        ("sha256 fingerprint", c.fingerprint_sha256.clone()),
        ("private key", yes_no(c.has_private_key).to_owned()),
        ("default", yes_no(c.default).to_owned()),
        ("listeners", if c.listeners.is_empty() { "-".into() } else { c.listeners.join(", ") }),
        ("chain", if c.chain.is_empty() { "-".into() } else { c.chain.join(" <- ") }),
        ("created", c.created.clone()),
    ];
    let rows = rows.into_iter().chain(c.acme.iter().flat_map(|a| {
        [
            ("acme hostnames", a.hostnames.join(", ")),
            ("acme status", format!("{} (renewal from {})", a.status, a.renew_at)),
            (
                "acme last attempt",
                format!("{} {}", a.last_attempt.as_deref().unwrap_or("-"), a.last_result.as_deref().unwrap_or("")),
            ),
        ]
    }));
    for (k, v) in rows {
        println!("{:<19} {v}", format!("{k}:"));
    }
    for w in &c.warnings {
        println!("{:<19} {w}", "warning:");
    }
}

fn print_request(r: &RequestView, pem: &str) {
    println!("id:                 {}", r.id);
    println!("friendly name:      {}", r.friendly_name);
    println!("subject:            {}", r.subject);
    println!("alternative names:  {}", r.sans.join(", "));
    println!("key:                {}", r.key_type);
    println!("created:            {}", r.created);
    print!("{pem}");
}

fn print_cert_table(certs: &[CertView], wide: bool) {
    let header = [
        "ID",
        "FRIENDLY NAME",
        "ISSUED TO",
        "ISSUED BY",
        "EXPIRES",
        "SANS",
        "KEY",
        "DEFAULT",
        "LISTENERS",
        "ACME",
        "WARNINGS",
    ];
    let rows: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.friendly_name.clone(),
                c.issued_to.clone(),
                c.issued_by.clone(),
                c.not_after.get(..10).unwrap_or(&c.not_after).to_owned(),
                c.sans.join(","),
                if c.has_private_key { "yes" } else { "no" }.into(),
                if c.default { "*" } else { "" }.into(),
                c.listeners.join(","),
                c.acme.as_ref().map_or_else(|| "-".to_owned(), |a| a.status.to_string()),
                c.warnings.join("; "),
            ]
        })
        .collect();
    // Ids are typed into commands and dates are short: never cut those.
    print_table(&header, &rows, if wide { None } else { Some(&[1, 2, 3, 5, 8, 10]) });
}

fn print_trust_table(trust: &[ops::TrustCert], wide: bool) {
    let header = ["FINGERPRINT", "ROLE", "SUBJECT", "ISSUED BY", "EXPIRES", "KEY", "USED BY", "WARNINGS"];
    let rows: Vec<Vec<String>> = trust
        .iter()
        .map(|t| {
            vec![
                if wide { t.fingerprint_sha256.clone() } else { t.fingerprint_sha256[..16].to_owned() },
                t.role.to_owned(),
                t.subject.clone(),
                t.issued_by.clone(),
                t.not_after.get(..10).unwrap_or(&t.not_after).to_owned(),
                "no".into(),
                if t.used_by.is_empty() { "-".into() } else { t.used_by.join(",") },
                t.warnings.join("; "),
            ]
        })
        .collect();
    print_table(&header, &rows, if wide { None } else { Some(&[2, 3, 6, 7]) });
}

fn print_trust(t: &ops::TrustCert) {
    let rows = [
        ("sha256 fingerprint", t.fingerprint_sha256.clone()),
        ("role", t.role.to_owned()),
        ("subject", t.subject.clone()),
        ("issued to", t.issued_to.clone()),
        ("issued by", t.issued_by.clone()),
        ("valid from", t.not_before.clone()),
        (
            "expires",
            format!("{} ({})", t.not_after, pki::expiry_phrase(parse_time(&t.not_after), OffsetDateTime::now_utc())),
        ),
        ("private key", "no".into()),
        (
            "used by",
            if t.used_by.is_empty() { "- (cert delete FINGERPRINT removes it)".into() } else { t.used_by.join(", ") },
        ),
    ];
    for (k, v) in rows {
        println!("{:<19} {v}", format!("{k}:"));
    }
    for w in &t.warnings {
        println!("{:<19} {w}", "warning:");
    }
}

fn parse_time(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
}

/// Per listener: its candidates and its fallback, as the daemon would serve them.
fn print_listener_lines(ctx: &Ctx, store: &Store) {
    let Ok(snapshot) = build_snapshot(ctx, store) else { return };
    println!();
    for l in ops::views::listener_rows(&snapshot) {
        println!("listener {}: {}; fallback {} ({})", l.name, l.candidates(), l.fallback, l.fallback_reason);
    }
}

fn print_request_table(requests: &[RequestView], wide: bool) {
    let header = ["ID", "FRIENDLY NAME", "SUBJECT", "SANS", "KEY", "CREATED"];
    let rows: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.friendly_name.clone(),
                r.subject.clone(),
                r.sans.join(","),
                r.key_type.to_string(),
                r.created.clone(),
            ]
        })
        .collect();
    print_table(&header, &rows, if wide { None } else { Some(&[1, 2, 3]) });
}

/// The width `print_table` fits a table into unless `--wide` is given.
const TABLE_WIDTH: usize = 120;
/// The widest a column gets, also with `--wide`.
const MAX_CELL: usize = 1000;

/// Prints a table with columns two spaces apart. With `shrinkable` (column indexes), the
/// widest of those columns are cut, with "…", until a line fits [`TABLE_WIDTH`].
fn print_table(header: &[&str], rows: &[Vec<String>], shrinkable: Option<&[usize]>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            // Even --wide: a hostile cell (a certificate with thousands of names) is cut.
            *w = (*w).max(cell.chars().count()).min(MAX_CELL);
        }
    }
    if let Some(shrinkable) = shrinkable {
        let gaps = 2 * widths.len().saturating_sub(1);
        let mut shrink = |columns: &[usize], floor: &dyn Fn(usize) -> usize| {
            while widths.iter().sum::<usize>() + gaps > TABLE_WIDTH {
                let Some(&widest) = columns.iter().filter(|&&i| widths[i] > floor(i)).max_by_key(|&&i| widths[i])
                else {
                    break;
                };
                widths[widest] -= 1;
            }
        };
        // First down to each header (at least 8 characters); then, if that is not enough,
        // headers too; the first column (the id, typed into commands) only as a last resort.
        shrink(shrinkable, &|i| header[i].len().max(8));
        shrink(shrinkable, &|_| 6);
        shrink(&[0], &|_| 24);
    }
    let cut = |cell: &str, w: usize| -> String {
        if cell.chars().count() <= w {
            cell.to_owned()
        } else {
            let mut s: String = cell.chars().take(w.saturating_sub(1)).collect();
            s.push('…');
            s
        }
    };
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let cell = cut(cell, *w);
            if i + 1 == cells.len() {
                s.push_str(&cell);
            } else {
                // Pad by characters, not bytes ("…" is three bytes).
                s.push_str(&cell);
                s.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command an operator runs shows an example in its --help.
    #[test]
    fn every_command_has_examples() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|c| c.get_name() != "help").collect();
            if subs.is_empty() {
                let help = cmd.get_after_help().map(ToString::to_string).unwrap_or_default();
                if !help.contains("portcullis ") {
                    missing.push(path.clone());
                }
            }
            for s in subs {
                walk(s, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no example in --help: {missing:?}");
    }

    /// Every argument, positional or flag, says what it is in --help.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for s in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
                walk(s, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
