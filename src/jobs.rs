//! Admin jobs by file drop (DESIGN.md, "Admin jobs by file drop"): `[jobs] dir` with
//! `incoming/`, `processing/`, `done/` and `failed/`.
//!
//! A job file is TOML: `action` plus the CLI flags of the matching command, `_` for `-`
//! and arrays for repeated flags. It is turned into the CLI's own argument list and
//! parsed by the CLI's parser (so a job accepts exactly what the command accepts), then
//! run through the same `ops`/`acme` functions. The runner claims a job by renaming it
//! into `processing/`, writes `NAME.result.json` atomically into `done/` or `failed/`,
//! then moves the job file beside it. A job found in `processing/` at start was cut off
//! by a crash and runs again (every action notices an effect already in the store),
//! unless it has been started twice already: a job that takes the daemon down each
//! time it runs is failed instead of crash-looping the service.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use crate::cli::args::{AcmeCommand, CertCommand, Cli, Command};
use crate::config::Config;
use crate::input::Links;
use crate::ops;
use crate::pki::rfc3339;
use crate::store::{EntryKind, Store};

pub mod result;

pub use result::{JobResult, JobStatus, RECENT, Recent};

pub const INCOMING: &str = "incoming";
pub const PROCESSING: &str = "processing";
pub const DONE: &str = "done";
pub const FAILED: &str = "failed";

/// Actions and the CLI command each runs.
const ACTIONS: &[(&str, &[&str])] = &[
    ("create-self-signed", &["cert", "create-self-signed"]),
    ("request", &["cert", "request"]),
    ("import", &["cert", "import"]),
    ("export", &["cert", "export"]),
    ("set-default", &["cert", "set-default"]),
    ("assign", &["cert", "assign"]),
    ("unassign", &["cert", "unassign"]),
    ("replace", &["cert", "replace"]),
    ("delete", &["cert", "delete"]),
    ("acme-request", &["acme", "request"]),
];

/// Fields given as positional arguments, in order.
const POSITIONAL: &[&str] = &["id", "old", "new", "files"];
/// Fields holding paths, resolved against the jobs directory.
const PATHS: &[&str] = &["files", "out", "password_file"];

/// Creates the four directories (0700).
pub fn ensure_dirs(root: &Path) -> std::io::Result<()> {
    for d in [INCOMING, PROCESSING, DONE, FAILED] {
        crate::store::atomic::create_dir(&root.join(d))?;
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Whether `name` in incoming/ is a job (not a file still being written).
fn is_job_name(name: &str) -> bool {
    name.ends_with(".toml") && !name.starts_with('.') && name.len() > ".toml".len()
}

/// Why a job file was refused: the line when it is known, the field to blame when there
/// is one, and why ("line 3: key: ...").
#[derive(Debug, thiserror::Error)]
#[error("{}{}{reason}", line.map_or_else(String::new, |l| format!("line {l}: ")), field.as_deref().map_or_else(String::new, |f| format!("{f}: ")))]
pub struct ParseError {
    pub line: Option<usize>,
    pub field: Option<String>,
    pub reason: String,
}

impl ParseError {
    fn new(line: Option<usize>, field: Option<&str>, reason: impl Into<String>) -> Self {
        Self { line, field: field.map(str::to_owned), reason: reason.into() }
    }
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The job file could not be read.
    #[error("{}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// The command refused or failed (as the CLI would say it).
    #[error(transparent)]
    Command(#[from] crate::cli::action::Error),
    /// An ACME order failed: the CA's problem verbatim, then the order's progress.
    #[error("{message} (progress: {})", progress.join("; "))]
    Acme { message: String, progress: Vec<String> },
    /// Something the daemon's configuration lacks for this action.
    #[error("{0}")]
    Config(&'static str),
    /// The store could not be opened, or a re-run check could not read it.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// On a cluster: etcd refused or did not answer; nothing was written.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Error),
    /// The action is not one jobs run, or its task died.
    #[error("{0}")]
    Internal(String),
}

/// Why `job submit` refused a file; names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{}: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// A parsed job: its action and the CLI command it runs.
pub struct Parsed {
    pub action: String,
    pub(crate) command: Command,
}

/// Parses a job file's text; errors name the field and, where known, the line.
pub fn parse(text: &str, jobs_dir: &Path) -> Result<Parsed, ParseError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        ParseError::new(Some(line), None, e.message().trim())
    })?;
    let line_of = |key: &str| {
        text.lines()
            .position(|l| l.trim_start().strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('=')))
            .map(|i| i + 1)
    };
    let action = match table.get("action") {
        Some(toml::Value::String(a)) => a.clone(),
        Some(_) => return Err(ParseError::new(line_of("action"), Some("action"), "must be a string")),
        None => return Err(ParseError::new(None, Some("action"), format!("missing; one of {}", action_names()))),
    };
    let Some((_, words)) = ACTIONS.iter().find(|(a, _)| *a == action) else {
        let why = format!("unknown action {action:?}; one of {}", action_names());
        return Err(ParseError::new(line_of("action"), None, why));
    };
    let mut argv: Vec<String> = vec!["portcullis".into()];
    argv.extend(words.iter().map(|w| (*w).to_owned()));
    let mut flags = Vec::new();
    let mut positional: Vec<(usize, Vec<String>)> = Vec::new();
    for (key, value) in &table {
        if key == "action" {
            continue;
        }
        if matches!(key.as_str(), "password" | "passphrase" | "pass") {
            return Err(ParseError::new(
                line_of(key),
                Some(key),
                "passwords are accepted only through password_file (a file only the daemon can read), \
                 so they never sit in job files or results",
            ));
        }
        if matches!(key.as_str(), "config" | "store" | "json") {
            return Err(ParseError::new(
                line_of(key),
                Some(key),
                "not a job field (the daemon's own configuration and store are used)",
            ));
        }
        let values: Vec<String> = match value {
            toml::Value::String(s) => vec![s.clone()],
            toml::Value::Integer(i) => vec![i.to_string()],
            toml::Value::Boolean(b) => {
                if *b {
                    flags.push(format!("--{}", key.replace('_', "-")));
                }
                continue;
            }
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    _ => Err(ParseError::new(line_of(key), Some(key), "arrays hold strings")),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                let why = "expected a string, number, boolean or array of strings";
                return Err(ParseError::new(line_of(key), Some(key), why));
            }
        };
        let values: Vec<String> = if PATHS.contains(&key.as_str()) {
            values.into_iter().map(|v| jobs_dir.join(v).display().to_string()).collect()
        } else {
            values
        };
        match POSITIONAL.iter().position(|p| p == key) {
            Some(i) => positional.push((i, values)),
            None => {
                for v in values {
                    flags.push(format!("--{}", key.replace('_', "-")));
                    flags.push(v);
                }
            }
        }
    }
    positional.sort_by_key(|(i, _)| *i);
    argv.extend(positional.into_iter().flat_map(|(_, v)| v));
    // Flags after "--"-free positionals: a value starting with "-" must stay a value.
    argv.extend(flags);
    use clap::Parser;
    let cli = Cli::try_parse_from(&argv).map_err(|e| clap_message(&e, &line_of))?;
    let command = cli.command.ok_or_else(|| ParseError::new(None, None, "no command"))?;
    Ok(Parsed { action, command })
}

fn action_names() -> String {
    ACTIONS.iter().map(|(a, _)| *a).collect::<Vec<_>>().join(", ")
}

/// clap's error in job terms: fields instead of flags, the line where it is known.
fn clap_message(e: &clap::Error, line_of: &dyn Fn(&str) -> Option<usize>) -> ParseError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    let field = arg.as_deref().map(|a| {
        a.trim_start_matches("--").split([' ', '=', '<']).next().unwrap_or_default().replace('-', "_").to_lowercase()
    });
    match (e.kind(), field) {
        (ErrorKind::UnknownArgument, Some(f)) => {
            ParseError::new(line_of(&f), None, format!("unknown field `{f}` for this action"))
        }
        (ErrorKind::MissingRequiredArgument, Some(f)) => ParseError::new(None, None, format!("missing field `{f}`")),
        (_, f) => {
            let first = e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
            match f {
                Some(f) => ParseError::new(line_of(&f), Some(&f), first),
                None => ParseError::new(None, None, first),
            }
        }
    }
}

/// What running a job produced.
#[derive(Default)]
struct Outcome {
    messages: Vec<String>,
    warnings: Vec<String>,
    outputs: serde_json::Value,
}

/// Where jobs run: the daemon's configuration, store and ACME challenge map.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub store_dir: PathBuf,
    pub challenges: crate::acme::Challenges,
    /// On a cluster: where ACME tokens go.
    pub tokens: Option<crate::acme::ClusterTokens>,
}

/// Runs `parsed`. `rerun`: the job was cut off by a crash and may have had its effect.
/// On a cluster it runs on a scratch copy read from etcd and commits what changed.
async fn execute(parsed: Parsed, ctx: &Context, rerun: bool) -> Result<Outcome, Error> {
    let Some(cfg) = ctx.config.cluster.as_ref() else { return execute_here(parsed, ctx, rerun).await };
    let cluster = crate::cluster::Cluster::connect(cfg).await?;
    let mut work = crate::cluster::Work::begin(&cluster, &ctx.store_dir).await?;
    // An order may take a while: it guards only the keys it changes.
    work.exclusive = !matches!(parsed.command, Command::Acme(_));
    let lease = cluster.grant(300).await?;
    let here = Context {
        store_dir: work.dir().to_owned(),
        tokens: Some(crate::acme::ClusterTokens { cluster: cluster.clone(), lease, fence: None }),
        ..ctx.clone()
    };
    let out = execute_here(parsed, &here, rerun).await;
    work.commit(&cluster, None, &ctx.store_dir).await?;
    out
}

async fn execute_here(parsed: Parsed, ctx: &Context, rerun: bool) -> Result<Outcome, Error> {
    match parsed.command {
        Command::Acme(AcmeCommand::Request { hostnames, key, name, listeners, replace, challenge }) => {
            let acme =
                ctx.config.acme.as_ref().ok_or(Error::Config("no [acme] section in the daemon's configuration"))?;
            let params = crate::cli::action::acme_request(
                &hostnames,
                key.as_deref(),
                name,
                &listeners,
                replace,
                challenge.as_deref(),
                &ctx.config,
            )?;
            let responder = crate::acme::Responder {
                challenges: ctx.challenges.clone(),
                on_disk: false,
                check: Vec::new(),
                cluster: ctx.tokens.clone(),
            };
            let lines = Mutex::new(Vec::new());
            let progress = |l: &str| lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(l.to_owned());
            let r = crate::acme::request(acme, &ctx.store_dir, &params, &responder, &progress).await;
            let messages = lines.into_inner().unwrap_or_default();
            match r {
                Ok(o) => Ok(Outcome {
                    messages,
                    warnings: Vec::new(),
                    outputs: serde_json::to_value(&o).unwrap_or_default(),
                }),
                Err(e) => Err(Error::Acme { message: format!("{e:#}"), progress: messages }),
            }
        }
        Command::Cert(cmd) => {
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || cert(*cmd, &ctx, rerun))
                .await
                .map_err(|e| Error::Internal(format!("job task failed: {e}")))?
        }
        _ => Err(Error::Internal("not a job action".into())),
    }
}

fn cert(mut cmd: CertCommand, ctx: &Context, rerun: bool) -> Result<Outcome, Error> {
    let mut store = Store::open(&ctx.store_dir)?;
    // A job run twice (a crash cut it off after its effect, or it was submitted twice)
    // finds its effect and reports it instead of doing it again.
    match &mut cmd {
        CertCommand::CreateSelfSigned { new, days } => {
            let params = new.params(*days).map_err(crate::cli::action::Error::from)?;
            if let Some(done) = already(&store, &params, EntryKind::Cert) {
                return Ok(done);
            }
        }
        CertCommand::Request { new, from } => {
            let mut params = new.params(0).map_err(crate::cli::action::Error::from)?;
            // `--from` without `--san` asks for the source certificate's names.
            if let Some(from) = from.as_deref()
                && params.identity.sans.is_empty()
                && let Ok((EntryKind::Cert, id)) = store.resolve(from)
                && let Ok(source) = store.read_cert(&id)
            {
                params.identity.sans = source.info.sans;
            }
            if let Some(mut done) = already(&store, &params, EntryKind::Request) {
                if let Some(id) = done.outputs["id"].as_str()
                    && let Ok(r) = store.read_request(id)
                {
                    done.outputs["csr_pem"] = r.request_pem.into();
                }
                return Ok(done);
            }
        }
        // A re-run may find its own half-finished export: replace it.
        CertCommand::Export { force, .. } => *force |= rerun,
        _ => {}
    }
    let deleting = match &cmd {
        CertCommand::Delete { id, .. } => Some(id.clone()),
        _ => None,
    };
    match crate::cli::action::cert(cmd, &mut store, &ctx.config, &crate::cli::action::Quiet) {
        None => Err(Error::Internal("not a job action".into())),
        Some(Ok(done)) => {
            let (messages, warnings, outputs) = done.parts();
            Ok(Outcome { messages: messages.to_vec(), warnings: warnings.to_vec(), outputs })
        }
        Some(Err(crate::cli::action::Error::Ops(ops::Error::Store(crate::store::Error::NotFound(_)))))
            if rerun && let Some(id) = deleting =>
        {
            Ok(Outcome {
                messages: vec![format!("{id}: not in the store; the interrupted run had already deleted it")],
                warnings: Vec::new(),
                outputs: serde_json::json!({ "id": id }),
            })
        }
        Some(Err(e)) => Err(e.into()),
    }
}

/// An entry of `kind` with the requested name and the same alternative names is the
/// effect of an earlier run of this job (cut off by a crash, or submitted twice): report
/// it instead of creating a second one. A different entry with that name is the usual
/// "name taken" error.
fn already(store: &Store, params: &ops::CreateParams, kind: EntryKind) -> Option<Outcome> {
    let name = params.identity.friendly_name.trim();
    let (k, id) = store.find_by_name(name)?;
    if k != kind {
        return None;
    }
    let identity = params.identity.validate().ok()?;
    let mut wanted: Vec<String> = identity.sans.iter().map(|s| s.to_string().to_lowercase()).collect();
    let mut have: Vec<String> = match kind {
        EntryKind::Cert => store.read_cert(&id).map(|e| e.info.sans).unwrap_or_default(),
        EntryKind::Request => store.read_request(&id).map(|r| r.meta.sans).unwrap_or_default(),
    }
    .into_iter()
    .map(|s| s.to_lowercase())
    .collect();
    wanted.sort();
    have.sort();
    if wanted != have {
        return None;
    }
    Some(Outcome {
        messages: vec![format!("{id} ({name}) already exists with these names; not created again")],
        warnings: Vec::new(),
        outputs: serde_json::json!({ "id": id, "friendly_name": name, "already_present": true }),
    })
}

/// The job runner: recovers processing/, then runs incoming/ in name order whenever
/// `wake` fires (file events) and every few seconds, until `shutdown`.
pub async fn runner(
    dir: PathBuf,
    store_dir: PathBuf,
    configs: tokio::sync::watch::Receiver<Arc<Config>>,
    challenges: crate::acme::Challenges,
    recent: Recent,
    mut wake: tokio::sync::mpsc::UnboundedReceiver<()>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let ctx = || Context {
        config: configs.borrow().clone(),
        store_dir: store_dir.clone(),
        challenges: challenges.clone(),
        tokens: None,
    };
    if let Err(e) = ensure_dirs(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "jobs: cannot create the job directories");
        return;
    }
    // A crash while writing a result (or an attempts count) leaves its temporary file
    // (only the runner writes in done/, failed/ and processing/); the job itself is still
    // in processing/ and runs again. An attempts count whose job is gone is stale.
    for d in [DONE, FAILED, PROCESSING] {
        for e in fs::read_dir(dir.join(d)).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let orphan = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".attempts"))
                .is_some_and(|stem| !dir.join(PROCESSING).join(format!("{stem}.toml")).exists());
            if name.starts_with('.') && name.contains(".tmp-") || orphan {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    // Jobs a crash cut off: finish moving those with a result, run the others again.
    for name in names(&dir.join(PROCESSING)) {
        let stem = name.trim_end_matches(".toml");
        let finished = [DONE, FAILED].into_iter().find(|d| dir.join(d).join(format!("{stem}.result.json")).exists());
        match finished {
            Some(d) => {
                let _ = move_file(&dir.join(PROCESSING).join(&name), &dir.join(d).join(&name));
                let _ = fs::remove_file(attempts_path(&dir, &name));
            }
            None if attempts(&dir, &name) >= MAX_ATTEMPTS => {
                let stem = stem.to_owned();
                let now = rfc3339(OffsetDateTime::now_utc());
                let path = dir.join(PROCESSING).join(&name);
                let text = crate::input::read(&path, crate::input::MAX_TOML, Links::Refuse).unwrap_or_default();
                let result = JobResult {
                    job: stem,
                    action: text_action(&String::from_utf8_lossy(&text)),
                    status: JobStatus::Failed,
                    started: now.clone(),
                    finished: now,
                    rerun: true,
                    messages: Vec::new(),
                    warnings: Vec::new(),
                    outputs: serde_json::Value::Null,
                    error: Some(format!(
                        "the daemon stopped while running this job ({MAX_ATTEMPTS} attempts); not run again"
                    )),
                };
                finish(&dir, &path, &name, &result, &recent);
            }
            None => run_one(&dir, &name, &ctx(), true, &recent).await,
        }
    }
    loop {
        for name in names(&dir.join(INCOMING)) {
            if shutdown.is_cancelled() {
                return;
            }
            if let Some(claimed) = claim(&dir, &name, &recent) {
                run_one(&dir, &claimed, &ctx(), false, &recent).await;
            }
        }
        tokio::select! {
            Some(()) = wake.recv() => {
                // Let a burst of drops settle, then take them all in name order.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while wake.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Job file names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_job_name(n))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::rename(from, to)?;
    for d in [from.parent(), to.parent()].into_iter().flatten() {
        fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// Checks the file's owner and mode and claims it into processing/ (under a fresh name
/// if a job of that name already ran). `None` if it was refused or taken by another.
fn claim(dir: &Path, name: &str, recent: &Recent) -> Option<String> {
    let path = dir.join(INCOMING).join(name);
    let meta = fs::symlink_metadata(&path).ok()?;
    let me = rustix::process::geteuid().as_raw();
    let refused = if !meta.file_type().is_file() {
        Some("not a regular file (symlinks and devices are refused)".to_owned())
    } else if meta.uid() != me && meta.uid() != 0 {
        Some(format!("owned by uid {}, not by the daemon's user (uid {me}) or root", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!("mode {:04o}: writable by group or others; use 0600 or 0644", meta.mode() & 0o7777))
    } else {
        None
    };
    let stem = name.trim_end_matches(".toml");
    let taken = |s: &str| [DONE, FAILED].iter().any(|d| dir.join(d).join(format!("{s}.result.json")).exists());
    let stem = if taken(stem) {
        let now = OffsetDateTime::now_utc();
        format!("{stem}-{}{:09}", now.unix_timestamp(), now.nanosecond())
    } else {
        stem.to_owned()
    };
    let claimed = format!("{stem}.toml");
    if let Some(reason) = refused {
        let now = rfc3339(OffsetDateTime::now_utc());
        let result = JobResult {
            job: stem,
            action: String::new(),
            status: JobStatus::Failed,
            started: now.clone(),
            finished: now,
            rerun: false,
            messages: Vec::new(),
            warnings: Vec::new(),
            outputs: serde_json::Value::Null,
            error: Some(format!("{name}: refused: {reason}")),
        };
        finish(dir, &path, &claimed, &result, recent);
        return None;
    }
    match move_file(&path, &dir.join(PROCESSING).join(&claimed)) {
        Ok(()) => Some(claimed),
        Err(e) => {
            tracing::warn!(job = name, error = %e, "jobs: could not claim");
            None
        }
    }
}

/// Runs of a job the daemon may start; a job it was running when it stopped (a crash,
/// an abort, a kill) is then failed instead of run again, so one hostile job cannot
/// crash-loop the daemon under systemd's `Restart=on-failure`.
const MAX_ATTEMPTS: u32 = 2;

/// The attempts file of a job in processing/: hidden, so never taken for a job.
fn attempts_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(PROCESSING).join(format!(".{}.attempts", name.trim_end_matches(".toml")))
}

/// How many times the job in processing/ has been started.
fn attempts(dir: &Path, name: &str) -> u32 {
    crate::input::read(&attempts_path(dir, name), 64, Links::Refuse)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

async fn run_one(dir: &Path, name: &str, ctx: &Context, rerun: bool, recent: &Recent) {
    let path = dir.join(PROCESSING).join(name);
    // Counted durably before the job runs: a crash inside it must find the count.
    let count = attempts(dir, name) + 1;
    if let Err(e) = crate::store::write_export(&attempts_path(dir, name), format!("{count}\n").as_bytes(), false, true)
    {
        tracing::warn!(job = name, error = %e, "jobs: cannot record the attempt");
    }
    // Test builds: a job that takes the daemon down every time it runs.
    crate::store::atomic::failpoint("job-started");
    let started = OffsetDateTime::now_utc();
    let stem = name.trim_end_matches(".toml").to_owned();
    let (action, outcome) = match crate::input::read_text(&path, crate::input::MAX_TOML, Links::Refuse)
        .map_err(|error| Error::Read { path: path.clone(), error })
    {
        Err(e) => (String::new(), Err(e)),
        Ok(text) => match parse(&text, dir) {
            Err(e) => (text_action(&text), Err(e.into())),
            Ok(parsed) => {
                let action = parsed.action.clone();
                tracing::info!(job = %stem, %action, rerun, "job started");
                let outcome = execute(parsed, ctx, rerun).await;
                // Test builds: a crash after the effect, before the result is written.
                crate::store::atomic::failpoint("job-executed");
                (action, outcome)
            }
        },
    };
    let (status, error, o) = match outcome {
        Ok(o) => (JobStatus::Done, None, o),
        // One line: a result's error is read as one.
        Err(e) => (JobStatus::Failed, Some(e.to_string().replace('\n', " ")), Outcome::default()),
    };
    let result = JobResult {
        job: stem,
        action,
        status,
        started: rfc3339(started),
        finished: rfc3339(OffsetDateTime::now_utc()),
        rerun,
        messages: o.messages,
        warnings: o.warnings,
        outputs: o.outputs,
        error,
    };
    finish(dir, &path, name, &result, recent);
}

/// The action as written, for the result of a job that did not parse.
fn text_action(text: &str) -> String {
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("action").and_then(|a| a.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// Writes the result, then moves the job file beside it.
fn finish(dir: &Path, job_file: &Path, name: &str, result: &JobResult, recent: &Recent) {
    let target = dir.join(if result.status == JobStatus::Done { DONE } else { FAILED });
    let json = serde_json::to_vec_pretty(result).unwrap_or_default();
    let result_path = target.join(format!("{}.result.json", result.job));
    if let Err(e) = crate::store::write_export(&result_path, &json, false, true) {
        tracing::error!(path = %result_path.display(), error = %e, "jobs: cannot write the result");
        return;
    }
    if let Err(e) = move_file(job_file, &target.join(name)) {
        tracing::error!(job = %result.job, error = %e, "jobs: cannot move the job file");
    }
    let _ = fs::remove_file(attempts_path(dir, name));
    // Only known actions as label values: a job file cannot create new series.
    let action =
        if ACTIONS.iter().any(|(a, _)| *a == result.action) { result.action.clone() } else { "unknown".to_owned() };
    metrics::counter!(crate::metrics::names::JOBS, "action" => action, "result" => result.status.as_str()).increment(1);
    match &result.error {
        Some(e) => tracing::warn!(job = %result.job, action = %result.action, error = %e, "job failed"),
        None => tracing::info!(job = %result.job, action = %result.action, "job done"),
    }
    let mut r = recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if r.len() == RECENT {
        r.pop_front();
    }
    r.push_back(result.clone());
}

/// `job submit`: validates `file` locally and drops it into incoming/ atomically;
/// returns the job name.
pub fn submit(dir: &Path, file: &Path) -> Result<String, SubmitError> {
    let refuse = |path: &Path, reason: String| SubmitError::Refused { path: path.to_owned(), reason };
    let text = crate::input::read_text(file, crate::input::MAX_TOML, Links::Follow)
        .map_err(|e| refuse(file, e.to_string()))?;
    parse(&text, dir).map_err(|e| refuse(file, e.to_string()))?;
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("job.toml");
    let stem = name.strip_suffix(".toml").unwrap_or(name).trim_start_matches('.');
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(refuse(file, "use a file name of letters, digits, - _ and . for the job".into()));
    }
    for d in [DONE, FAILED] {
        let r = dir.join(d).join(format!("{stem}.result.json"));
        if r.exists() {
            return Err(refuse(file, format!("a job named {stem} already ran ({}); rename the file", r.display())));
        }
    }
    let target = dir.join(INCOMING).join(format!("{stem}.toml"));
    if !dir.join(INCOMING).is_dir() {
        let why = "no such directory; is the daemon running with this [jobs] dir?";
        return Err(refuse(&dir.join(INCOMING), why.into()));
    }
    // 0644: readable by the daemon's user even when root submits; no secrets in jobs.
    crate::store::write_export(&target, text.as_bytes(), false, false).map_err(|e| match e {
        crate::store::Error::Io { error, .. } if error.kind() == std::io::ErrorKind::AlreadyExists => {
            refuse(&target, "a job of that name is waiting".into())
        }
        e => SubmitError::Store(e),
    })?;
    Ok(stem.to_owned())
}

/// `job submit --wait`: the result once it appears.
pub fn wait(dir: &Path, name: &str, timeout: Duration) -> Option<JobResult> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        for d in [DONE, FAILED] {
            if let Ok(text) = crate::input::read_text(
                &dir.join(d).join(format!("{name}.result.json")),
                crate::input::MAX_TOML,
                Links::Refuse,
            ) && let Ok(r) = serde_json::from_str(&text)
            {
                return Some(r);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_the_cli_arguments() {
        let dir = Path::new("/jobs");
        let p = parse("action = \"create-self-signed\"\nname = \"Lab\"\nsan = [\"a.example.com\", \"*.example.com\"]\ndays = 30\n", dir)
            .unwrap();
        assert_eq!(p.action, "create-self-signed");
        match p.command {
            Command::Cert(c) => match *c {
                CertCommand::CreateSelfSigned { new, days } => {
                    assert_eq!(new.name, "Lab");
                    assert_eq!(new.sans, ["a.example.com", "*.example.com"]);
                    assert_eq!(days, 30);
                }
                other => panic!("{other:?}"),
            },
            _ => panic!("not a cert command"),
        }
        let p = parse("action = \"import\"\nfiles = [\"in/a.pem\", \"/abs/b.pem\"]\n", dir).unwrap();
        match p.command {
            Command::Cert(c) => match *c {
                CertCommand::Import { files, .. } => {
                    assert_eq!(files, [PathBuf::from("/jobs/in/a.pem"), PathBuf::from("/abs/b.pem")]);
                }
                other => panic!("{other:?}"),
            },
            _ => panic!("not a cert command"),
        }
    }

    #[test]
    fn bad_jobs_are_named() {
        let dir = Path::new("/jobs");
        let e = |t: &str| parse(t, dir).err().unwrap().to_string();
        assert!(e("action = \"launch\"\n").contains("unknown action \"launch\""));
        let typed = parse("action = \"delete\"\nid = \"x\"\npass = \"x\"\n", dir).err().unwrap();
        assert_eq!((typed.line, typed.field.as_deref()), (Some(3), Some("pass")));
        let m = e("action = \"delete\"\nid = \"x\"\ncolour = \"red\"\n");
        assert!(m.contains("line 3: unknown field `colour`"), "{m}");
        let m = e("action = \"export\"\nid = \"x\"\nformat = \"p12\"\nout = \"x.p12\"\npassword = \"hunter2\"\n");
        assert!(m.contains("line 5: password: passwords are accepted only through password_file"), "{m}");
        assert!(!m.contains("hunter2"));
        let m = e("action = \"delete\"\nid = [\n");
        assert!(m.starts_with("line "), "{m}");
        let m = e("action = \"create-self-signed\"\nsan = [\"a.example.com\"]\n");
        assert!(m.contains("missing field `name`"), "{m}");
        assert!(is_job_name("a.toml") && !is_job_name(".a.toml") && !is_job_name("a.toml.tmp"));
    }
}
