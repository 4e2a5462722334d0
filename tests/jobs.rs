//! Admin jobs by file drop against the real daemon and real files: every action has the
//! CLI's effect; bad jobs end in failed/ with the reason; half-written files are not
//! picked up; 100 jobs at once run once each; SIGKILL mid-batch loses and doubles nothing.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Env, Proc, free_port, openssl_ok};

fn config(env: &Env, admin: u16, tls: u16) -> String {
    format!(
        "[jobs]\ndir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{tls}\"]\n\
         [[listener]]\nname = \"internal\"\nbind = [\"127.0.0.1:{}\"]\n",
        env.path("jobs").display(),
        free_port()
    )
}

fn start(env: &Env) -> (Proc, u16) {
    let (admin, tls) = (free_port(), free_port());
    let daemon = env.daemon(&config(env, admin, tls), &[admin, tls]);
    (daemon, admin)
}

/// Drops `text` as incoming/NAME.toml the way a careful writer does: a dot-file, renamed.
fn drop_job(env: &Env, name: &str, text: &str) {
    let incoming = env.path("jobs/incoming");
    let tmp = incoming.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, incoming.join(format!("{name}.toml"))).unwrap();
}

fn result(env: &Env, name: &str, secs: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        for d in ["done", "failed"] {
            if let Ok(text) = fs::read_to_string(env.path(&format!("jobs/{d}/{name}.result.json"))) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["status"], if d == "done" { "done" } else { "failed" });
                // The job file is moved beside its result.
                let moved = env.path(&format!("jobs/{d}/{name}.toml"));
                let wait = Instant::now() + Duration::from_secs(2);
                while !moved.exists() && Instant::now() < wait {
                    std::thread::sleep(Duration::from_millis(10));
                }
                assert!(moved.exists(), "{name}.toml not moved to {d}/");
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no result for job {name} in {secs}s\n{}", env.daemon_log());
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn run_job(env: &Env, name: &str, text: &str) -> serde_json::Value {
    drop_job(env, name, text);
    result(env, name, 30)
}

fn done(env: &Env, name: &str, text: &str) -> serde_json::Value {
    let r = run_job(env, name, text);
    assert_eq!(r["status"], "done", "{r:#}");
    r
}

/// `cert list --json` reduced to what an action decides (not keys, serials or times).
fn shape(env: &Env) -> BTreeMap<String, String> {
    env.list()
        .into_iter()
        .map(|c| {
            let f = |k: &str| c[k].to_string();
            (
                c["friendly_name"].as_str().unwrap().to_owned(),
                [f("source"), f("sans"), f("issued_to"), f("key"), f("default"), f("listeners"), f("has_private_key")]
                    .join(" "),
            )
        })
        .collect()
}

#[test]
fn every_action_has_the_cli_effect() {
    let jobs_env = Env::initialised();
    let cli_env = Env::initialised();
    let (_daemon, admin) = start(&jobs_env);
    // The CLI side gets the same listeners in its configuration.
    let cli_cfg = cli_env.write("portcullis.toml", &config(&cli_env, free_port(), free_port()));
    let cli = |args: &[&str]| {
        let mut full = vec!["--config", cli_cfg.to_str().unwrap()];
        full.extend_from_slice(args);
        cli_env.run(&full).ok().to_owned()
    };

    // create-self-signed
    let r = done(
        &jobs_env,
        "01-create",
        "action = \"create-self-signed\"\nname = \"Lab\"\ncommon_name = \"lab.example.com\"\nsan = [\"lab.example.com\", \"*.lab.example.com\"]\nkey = \"ecdsa-p384\"\ndays = 30\n",
    );
    assert_eq!(r["outputs"]["id"], "lab");
    cli(&[
        "cert",
        "create-self-signed",
        "--name",
        "Lab",
        "--common-name",
        "lab.example.com",
        "--san",
        "lab.example.com",
        "--san",
        "*.lab.example.com",
        "--key",
        "ecdsa-p384",
        "--days",
        "30",
    ]);

    // request: the CSR is in the result, and openssl verifies it
    let r = done(
        &jobs_env,
        "02-request",
        "action = \"request\"\nname = \"Support 2027\"\ncountry = \"DE\"\norg = \"Example GmbH\"\ncommon_name = \"support.example.com\"\n",
    );
    assert_eq!(r["outputs"]["id"], "support-2027", "{r:#}");
    let csr = r["outputs"]["csr_pem"].as_str().unwrap();
    let verified = common::openssl(&["req", "-verify", "-noout", "-subject"], Some(csr));
    assert!(verified.0 && verified.1.contains("support.example.com"), "{verified:?}");
    assert!(!serde_json::to_string(&r).unwrap().contains("PRIVATE KEY"));
    let cli_csr = cli(&[
        "cert",
        "request",
        "--name",
        "Support 2027",
        "--country",
        "DE",
        "--org",
        "Example GmbH",
        "--common-name",
        "support.example.com",
    ]);

    // import: the CA's answer to each side's CSR, signed by one test CA
    for (env, csr) in [(&jobs_env, csr.to_owned()), (&cli_env, cli_csr)] {
        let ca = env.path("ca");
        fs::create_dir_all(&ca).unwrap();
        let p = |f: &str| ca.join(f).display().to_string();
        common::openssl_self_signed(
            &p("ca.key"),
            &p("ca.pem"),
            "/CN=Job Test CA",
            "30",
            &["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        );
        fs::write(ca.join("req.csr"), csr).unwrap();
        common::openssl_ca_sign(
            &p("req.csr"),
            &p("ca.pem"),
            &p("ca.key"),
            "20",
            &p("signed.pem"),
            &["-copy_extensions", "copyall"],
        );
    }
    fs::create_dir_all(jobs_env.path("jobs/in")).unwrap();
    fs::copy(jobs_env.path("ca/signed.pem"), jobs_env.path("jobs/in/signed.pem")).unwrap();
    fs::copy(jobs_env.path("ca/ca.pem"), jobs_env.path("jobs/in/ca.pem")).unwrap();
    let r = done(&jobs_env, "03-import", "action = \"import\"\nfiles = [\"in/signed.pem\", \"in/ca.pem\"]\n");
    assert_eq!(r["outputs"]["certificates"][0]["id"], "support-2027");
    cli(&[
        "cert",
        "import",
        cli_env.path("ca/signed.pem").to_str().unwrap(),
        cli_env.path("ca/ca.pem").to_str().unwrap(),
    ]);

    // export: p12 with a password from a file; openssl reads it with that password
    fs::write(jobs_env.path("jobs/in/pass"), "s3cret-pass\n").unwrap();
    fs::create_dir_all(jobs_env.path("jobs/out")).unwrap();
    let r = done(
        &jobs_env,
        "04-export",
        "action = \"export\"\nid = \"support-2027\"\nformat = \"p12\"\ninclude_chain = true\npassword_file = \"in/pass\"\nout = \"out/support.p12\"\n",
    );
    let p12 = jobs_env.path("jobs/out/support.p12");
    assert_eq!(r["outputs"]["path"], p12.display().to_string());
    assert_eq!(common::mode(&p12), 0o600);
    let info = openssl_ok(&["pkcs12", "-in", p12.to_str().unwrap(), "-passin", "pass:s3cret-pass", "-nokeys"], None);
    assert!(info.contains("support.example.com") && info.contains("Job Test CA"), "{info}");
    assert!(!serde_json::to_string(&r).unwrap().contains("s3cret"));

    // set-default, assign, unassign, replace, delete
    done(&jobs_env, "05-default", "action = \"set-default\"\nid = \"lab\"\n");
    cli(&["cert", "set-default", "lab"]);
    done(&jobs_env, "06-assign", "action = \"assign\"\nid = \"support-2027\"\nlistener = [\"public\", \"internal\"]\n");
    cli(&["cert", "assign", "support-2027", "--listener", "public", "--listener", "internal"]);
    done(&jobs_env, "07-unassign", "action = \"unassign\"\nid = \"support-2027\"\nlistener = [\"internal\"]\n");
    cli(&["cert", "unassign", "support-2027", "--listener", "internal"]);
    done(
        &jobs_env,
        "08-create",
        "action = \"create-self-signed\"\nname = \"Support 2028\"\nsan = [\"support.example.com\"]\n",
    );
    cli(&["cert", "create-self-signed", "--name", "Support 2028", "--san", "support.example.com"]);
    let r = done(&jobs_env, "09-replace", "action = \"replace\"\nold = \"support-2027\"\nnew = \"support-2028\"\n");
    assert_eq!(r["outputs"]["moved"][0], "the assignment to listener public", "{r:#}");
    cli(&["cert", "replace", "support-2027", "support-2028"]);
    done(&jobs_env, "10-delete", "action = \"delete\"\nid = \"support-2027\"\n");
    cli(&["cert", "delete", "support-2027"]);

    assert_eq!(shape(&jobs_env), shape(&cli_env));

    // The admin status lists the recent jobs.
    let status = common::curl(&[&format!("http://127.0.0.1:{admin}/status.json")]).1;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["jobs"].as_array().unwrap().len(), 10);
    let metrics = common::curl(&[&format!("http://127.0.0.1:{admin}/metrics")]).1;
    assert!(metrics.contains("portcullis_jobs_total{action=\"create-self-signed\",result=\"done\"} 2"), "{metrics}");

    // job submit --wait: the same through the CLI, with its exit status.
    let cfg = jobs_env.path("portcullis.toml");
    let file = jobs_env.write("assign-again.toml", "action = \"assign\"\nid = \"lab\"\nlistener = [\"internal\"]\n");
    let out = jobs_env.run(&["--config", cfg.to_str().unwrap(), "job", "submit", file.to_str().unwrap(), "--wait"]);
    assert!(out.ok().contains("job assign-again done"), "{out:?}");
    let file = jobs_env.write("bad-id.toml", "action = \"delete\"\nid = \"no-such-cert\"\n");
    let out = jobs_env.run(&["--config", cfg.to_str().unwrap(), "job", "submit", file.to_str().unwrap(), "--wait"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("no-such-cert"), "{out:?}");
    // Submitting the same name again is refused: its result would be overwritten.
    let out = jobs_env.run(&["--config", cfg.to_str().unwrap(), "job", "submit", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("already ran"), "{}", out.stderr);
    // submit validates locally: nothing is dropped for a bad file.
    let file = jobs_env.write("typo.toml", "action = \"delete\"\nid = \"lab\"\nforse = true\n");
    let out = jobs_env.run(&["--config", cfg.to_str().unwrap(), "job", "submit", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("line 3: unknown field `forse`"), "{}", out.stderr);
    assert!(!jobs_env.path("jobs/incoming/typo.toml").exists());
}

#[test]
fn bad_jobs_fail_with_the_reason_and_change_nothing() {
    let env = Env::initialised();
    let (_daemon, _) = start(&env);
    let before = env.tree();
    for (name, text, expect) in [
        ("malformed", "action = \"delete\"\nid = [\n", "line "),
        ("unknown-action", "action = \"reboot\"\n", "unknown action \"reboot\""),
        (
            "unknown-field",
            "action = \"create-self-signed\"\nname = \"X\"\ncolour = \"red\"\n",
            "line 3: unknown field `colour`",
        ),
        ("bad-key", "action = \"create-self-signed\"\nname = \"X\"\nkey = \"dsa-1024\"\n", "--key \"dsa-1024\""),
        ("bad-days", "action = \"create-self-signed\"\nname = \"X\"\ndays = \"soon\"\n", "days"),
        ("bad-san", "action = \"create-self-signed\"\nname = \"X\"\nsan = [\"a..b\"]\n", "--san"),
        ("no-action", "name = \"X\"\n", "action: missing"),
        (
            "inline-password",
            "action = \"import\"\nfiles = [\"x.p12\"]\npassword = \"hunter2\"\n",
            "only through password_file",
        ),
        ("missing-file", "action = \"import\"\nfiles = [\"nope.pem\"]\n", "nope.pem"),
        (
            "name-taken",
            "action = \"create-self-signed\"\nname = \"Portcullis Default\"\nsan = [\"x.example.com\"]\n",
            "already used by certificate portcullis-default",
        ),
        ("no-listener", "action = \"assign\"\nid = \"portcullis-default\"\nlistener = [\"dmz\"]\n", "dmz"),
    ] {
        let r = run_job(&env, name, text);
        assert_eq!(r["status"], "failed", "{name}: {r:#}");
        let err = r["error"].as_str().unwrap();
        assert!(err.contains(expect), "{name}: {err}");
        assert!(!serde_json::to_string(&r).unwrap().contains("hunter2"), "{name}: the password is in the result");
    }
    // A group-writable job file is refused (someone else could have written it).
    let incoming = env.path("jobs/incoming");
    fs::write(incoming.join(".w.tmp"), "action = \"delete\"\nid = \"x\"\n").unwrap();
    fs::set_permissions(incoming.join(".w.tmp"), fs::Permissions::from_mode(0o666)).unwrap();
    fs::rename(incoming.join(".w.tmp"), incoming.join("writable.toml")).unwrap();
    let r = result(&env, "writable", 30);
    assert!(r["error"].as_str().unwrap().contains("writable by group or others"), "{r:#}");
    assert_eq!(env.tree(), before, "a failed job changed the store");
}

#[test]
fn unfinished_files_are_not_picked_up() {
    let env = Env::initialised();
    let (_daemon, _) = start(&env);
    let incoming = env.path("jobs/incoming");
    // Still being written: a dot-file, and a name not ending in .toml.
    fs::write(incoming.join(".half.toml"), "action = \"create-self-signed\"\nname = \"Ha").unwrap();
    fs::write(incoming.join("half.toml.part"), "action = \"create-self-signed\"\nname = \"Ha").unwrap();
    done(&env, "marker", "action = \"create-self-signed\"\nname = \"Marker\"\nsan = [\"m.example.com\"]\n");
    std::thread::sleep(Duration::from_millis(300));
    assert!(incoming.join(".half.toml").exists() && incoming.join("half.toml.part").exists());
    assert_eq!(fs::read_dir(env.path("jobs/failed")).unwrap().count(), 0);
    // Finished: renamed into place, it runs.
    fs::write(
        incoming.join(".half.toml"),
        "action = \"create-self-signed\"\nname = \"Half\"\nsan = [\"h.example.com\"]\n",
    )
    .unwrap();
    fs::rename(incoming.join(".half.toml"), incoming.join("half.toml")).unwrap();
    assert_eq!(result(&env, "half", 30)["status"], "done");
}

/// Runs `job` in a daemon that dies right after the job's effect, before its result
/// (failpoint `job-executed`), then starts a daemon again; returns its result and the
/// daemon.
fn cut_off_then_rerun(env: &Env, name: &str, job: &str) -> (serde_json::Value, Proc) {
    let (admin, tls) = (free_port(), free_port());
    let cfg = config(env, admin, tls);
    let mut daemon = env.daemon_env(&cfg, &[admin, tls], &[("PORTCULLIS_FAILPOINT", "job-executed")]);
    drop_job(env, name, job);
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the failpoint did not stop the daemon: failed/ {:?}\n{}",
            names_in(&env.path("jobs/failed")),
            env.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env.path(&format!("jobs/processing/{name}.toml")).exists());
    assert!(names_in(&env.path("jobs/done")).is_empty());
    let daemon = env.daemon(&cfg, &[admin, tls]);
    (result(env, name, 30), daemon)
}

#[test]
fn a_job_cut_off_after_its_effect_is_reported_not_repeated() {
    let env = Env::initialised();
    let job = "action = \"create-self-signed\"\nname = \"Once\"\nsan = [\"once.example.com\"]\n";
    let (r, _daemon) = cut_off_then_rerun(&env, "crash", job);
    assert_eq!(r["status"], "done", "{r:#}");
    assert_eq!(r["rerun"], true);
    assert!(r["messages"][0].as_str().unwrap().contains("already exists with these names; not created again"), "{r:#}");
    let once = env.list().into_iter().filter(|c| c["friendly_name"] == "Once").count();
    assert_eq!(once, 1);
    assert!(emptied(&env.path("jobs/processing")));
}

/// The same for a renewal CSR made from a certificate's key (`request --from`), whose
/// names come from that certificate: the re-run finds the request it made.
#[test]
fn a_request_from_a_certificate_cut_off_is_reported_not_repeated() {
    let env = Env::initialised();
    env.run(&[
        "cert",
        "create-self-signed",
        "--name",
        "Site",
        "--san",
        "site.example.com",
        "--san",
        "*.site.example.com",
    ])
    .ok();
    let job = "action = \"request\"\nname = \"Site 2027\"\nfrom = \"site\"\n";
    let (r, _daemon) = cut_off_then_rerun(&env, "renewal", job);
    assert_eq!(r["status"], "done", "{r:#}");
    assert_eq!(r["rerun"], true);
    assert!(r["messages"][0].as_str().unwrap().contains("already exists with these names; not created again"), "{r:#}");
    assert!(r["outputs"]["csr_pem"].as_str().unwrap().contains("BEGIN CERTIFICATE REQUEST"), "{r:#}");
    let out = env.run(&["--json", "cert", "list", "--requests"]).ok().to_owned();
    let requests: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(requests.iter().filter(|q| q["friendly_name"] == "Site 2027").count(), 1, "{out}");
}

#[test]
fn a_job_that_crashes_the_daemon_twice_is_failed_not_run_forever() {
    let env = Env::initialised();
    let (admin, tls) = (free_port(), free_port());
    let cfg = config(&env, admin, tls);
    for d in ["jobs", "jobs/incoming"] {
        fs::create_dir(env.path(d)).unwrap();
        fs::set_permissions(env.path(d), fs::Permissions::from_mode(0o700)).unwrap();
    }
    drop_job(&env, "deadly", "action = \"create-self-signed\"\nname = \"Deadly\"\nsan = [\"deadly.example.com\"]\n");
    // Every start runs it and dies (as under systemd's Restart=on-failure), until the
    // third start, which fails it without running it, failpoint still armed.
    for attempt in 1..=2 {
        let mut daemon = env.daemon_env(&cfg, &[], &[("PORTCULLIS_FAILPOINT", "job-started")]);
        let code = daemon.wait_exit(30);
        assert_ne!(code, Some(0), "attempt {attempt}: the failpoint did not stop the daemon");
        assert!(env.path("jobs/processing/deadly.toml").exists(), "attempt {attempt}");
    }
    let mut daemon = env.daemon_env(&cfg, &[admin, tls], &[("PORTCULLIS_FAILPOINT", "job-started")]);
    let r = result(&env, "deadly", 30);
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["action"], "create-self-signed");
    assert_eq!(r["error"], "the daemon stopped while running this job (2 attempts); not run again");
    assert!(emptied(&env.path("jobs/processing")), "the attempts file is removed too");
    assert!(env.list().iter().all(|c| c["friendly_name"] != "Deadly"));
    assert!(daemon.0.try_wait().unwrap().is_none(), "not run a third time:\n{}", env.daemon_log());
}

/// Whether `dir` is empty within 2 s: the runner writes a job's result first, then moves
/// the job file and removes its attempts count, so a reader of the result can be early.
fn emptied(dir: &Path) -> bool {
    let wait = Instant::now() + Duration::from_secs(2);
    while !names_in(dir).is_empty() && Instant::now() < wait {
        std::thread::sleep(Duration::from_millis(10));
    }
    names_in(dir).is_empty()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// Drops `n` create-self-signed jobs at once (written elsewhere, renamed in).
fn drop_batch(env: &Env, n: usize) -> Vec<String> {
    let staging: PathBuf = env.path("batch");
    fs::create_dir_all(&staging).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("job-{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        fs::write(
            staging.join(format!("{name}.toml")),
            format!("action = \"create-self-signed\"\nname = \"Batch {i:03}\"\nsan = [\"b{i}.example.com\"]\n"),
        )
        .unwrap();
    }
    for name in &names {
        fs::rename(staging.join(format!("{name}.toml")), env.path(&format!("jobs/incoming/{name}.toml"))).unwrap();
    }
    names
}

fn assert_each_done_once(env: &Env, names: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while names_in(&env.path("jobs/done")).len() < 2 * names.len() {
        assert!(
            Instant::now() < deadline,
            "not all done: {:?}\n{}",
            names_in(&env.path("jobs/failed")),
            env.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut expected: Vec<String> =
        names.iter().flat_map(|n| [format!("{n}.result.json"), format!("{n}.toml")]).collect();
    expected.sort();
    assert_eq!(names_in(&env.path("jobs/done")), expected);
    assert!(names_in(&env.path("jobs/failed")).is_empty(), "{:?}", names_in(&env.path("jobs/failed")));
    assert!(names_in(&env.path("jobs/incoming")).is_empty());
    assert!(emptied(&env.path("jobs/processing")));
    // Each certificate exactly once.
    let list = env.list();
    for i in 0..names.len() {
        let n = list.iter().filter(|c| c["friendly_name"] == format!("Batch {i:03}")).count();
        assert_eq!(n, 1, "Batch {i:03} is in the store {n} times");
    }
}

#[test]
fn a_hundred_jobs_at_once_run_once_each() {
    let env = Env::initialised();
    let (_daemon, _) = start(&env);
    let names = drop_batch(&env, 100);
    assert_each_done_once(&env, &names);
}

#[test]
fn sigkill_mid_batch_then_restart_runs_every_job_once() {
    let env = Env::initialised();
    let (mut daemon, _) = start(&env);
    let names = drop_batch(&env, 60);
    // Kill it once some, not all, are done.
    let deadline = Instant::now() + Duration::from_secs(60);
    while names_in(&env.path("jobs/done")).len() < 20 {
        assert!(Instant::now() < deadline, "no progress\n{}", env.daemon_log());
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.signal("KILL");
    daemon.wait_exit(10);
    let done_before = names_in(&env.path("jobs/done")).len() / 2;
    assert!(done_before < 60, "the batch finished before the kill; nothing was tested");
    drop(daemon);
    let (_daemon, _) = start(&env);
    assert_each_done_once(&env, &names);
}
