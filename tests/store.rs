//! The store: permissions, the default certificate, damage and newer versions reported
//! without rewriting, crash safety, and writers serialised by the lock.

// These tests damage the store by hand, as an operator might.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;

use common::{Env, mode};

fn create(env: &Env, name: &str, san: &str) -> String {
    env.run(&["--json", "cert", "create-self-signed", "--name", name, "--san", san]).json()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn keys_are_0600_and_directories_0700() {
    let env = Env::initialised();
    let id = create(&env, "Web", "web.example.test");
    env.run(&["cert", "request", "--name", "Req", "--san", "req.example.test"]).ok();
    let s = env.store();
    for dir in [s.clone(), s.join("certs"), s.join("certs").join(&id), s.join("requests"), s.join("requests/req")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for key in [
        s.join("certs").join(&id).join("key.pem"),
        s.join("certs/portcullis-default/key.pem"),
        s.join("requests/req/key.pem"),
    ] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
}

#[test]
fn default_falls_back_to_factory_on_delete() {
    let env = Env::initialised();
    let id = create(&env, "Web", "web.example.test");
    let run = env.run(&["cert", "set-default", &id]);
    assert!(run.ok().contains("default certificate: web (was portcullis-default)"), "{}", run.stdout);
    let list = env.list();
    assert_eq!(list.iter().filter(|c| c["default"] == true).count(), 1);
    assert_eq!(list.iter().find(|c| c["default"] == true).unwrap()["id"], "web");
    assert!(fs::read_to_string(env.store().join("state.toml")).unwrap().contains("default = \"web\""));

    let run = env.run(&["cert", "delete", "web", "--force"]);
    run.ok();
    assert!(run.stderr.contains("web was served: it is the global default; the factory default"), "{}", run.stderr);
    let list = env.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "portcullis-default");
    assert_eq!(list[0]["default"], true);
    let status = env.run(&["--json", "status"]).json();
    assert_eq!(status["default"]["id"], "portcullis-default");

    // Friendly names can be used instead of ids, and are free again once deleted.
    let id = create(&env, "Web", "web.example.test");
    env.run(&["cert", "set-default", "WEB"]).ok();
    assert_eq!(env.list().iter().find(|c| c["id"] == id.as_str()).unwrap()["default"], true);
}

#[test]
fn newer_store_is_refused_untouched() {
    let env = Env::initialised();
    let state = env.store().join("state.toml");
    fs::write(&state, "store_format = 2\nshiny_new_field = true\n").unwrap();
    let before = env.tree();
    for args in [
        vec!["cert", "list"],
        vec!["cert", "create-self-signed", "--name", "X", "--san", "x.example.test"],
        vec!["status"],
    ] {
        let run = env.run(&args);
        assert_eq!(run.code, Some(1), "{args:?}");
        let line = run.stderr.trim();
        assert!(line.contains("state.toml: written by a newer Portcullis (store format 2"), "{line}");
        assert_eq!(line.lines().count(), 1);
    }
    assert_eq!(env.tree(), before);
}

#[test]
fn damaged_state_is_reported_never_rewritten() {
    let env = Env::initialised();
    let state = env.store().join("state.toml");
    fs::write(&state, "store_format = 1\ndefault = [oops\n").unwrap();
    let before = env.tree();
    let run = env.run(&["cert", "list"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.starts_with("error: ") && run.stderr.contains("state.toml"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert_eq!(env.tree(), before);

    // A lost state.toml in a store with certificates is damage too, not a fresh store.
    create_in_good_store_then_remove_state();
}

fn create_in_good_store_then_remove_state() {
    let env = Env::initialised();
    create(&env, "Web", "web.example.test");
    fs::remove_file(env.store().join("state.toml")).unwrap();
    let before = env.tree();
    let run = env.run(&["cert", "list"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("state.toml: missing, but the store holds 1 other entry (web)"), "{}", run.stderr);
    assert_eq!(env.tree(), before);
}

#[test]
fn damaged_entry_is_skipped_and_named() {
    let env = Env::initialised();
    create(&env, "Good", "good.example.test");
    let bad = create(&env, "Bad", "bad.example.test");
    let cert = env.store().join("certs").join(&bad).join("cert.pem");
    fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n").unwrap();
    let before = env.tree();
    let run = env.run(&["--json", "cert", "list"]);
    let ids: Vec<String> =
        run.json().as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["good", "portcullis-default"]);
    assert!(run.stderr.contains(&format!("{}", cert.display())), "{}", run.stderr);
    assert_eq!(env.tree(), before);
    let check = env.run(&["check-config"]);
    assert_eq!(check.code, Some(1));
    assert!(check.stderr.contains("cert.pem"), "{}", check.stderr);

    // A key that does not match its certificate is flagged, not silently used.
    let other = create(&env, "Other", "other.example.test");
    let good_key = env.store().join("certs/good/key.pem");
    fs::copy(env.store().join("certs").join(&other).join("key.pem"), &good_key).unwrap();
    let list = env.list();
    let good = list.iter().find(|c| c["id"] == "good").unwrap();
    assert_eq!(good["has_private_key"], false);
    assert!(good["warnings"].to_string().contains("private key does not match"), "{good}");
}

#[test]
fn concurrent_writers_are_serialised() {
    let env = Env::initialised();
    let children: Vec<_> = (0..6)
        .map(|i| {
            // Three distinct names, each requested twice at once: exactly one of each pair wins.
            let name = format!("Parallel {}", i % 3);
            env.cmd(&["cert", "create-self-signed", "--name", &name, "--san", &format!("p{i}.example.test")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<i32> = children.into_iter().map(|c| c.wait_with_output().unwrap().status.code().unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 1).count(), 3, "{codes:?}");
    let mut names: Vec<String> = env.list().iter().map(|c| c["friendly_name"].as_str().unwrap().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["Parallel 0", "Parallel 1", "Parallel 2", "Portcullis Default"]);
}

/// Crash safety: a process killed at each point of an atomic write leaves the old state
/// or the new one, never a mix, and the next writer cleans `.staging/`.
#[cfg(feature = "failpoints")]
#[test]
fn a_crash_at_any_point_leaves_old_or_new_state() {
    let crash = |env: &Env, args: &[&str], point: &str| {
        let run = env.run_env(args, "PORTCULLIS_FAILPOINT", point);
        assert_eq!(run.code, None, "{point}: the process should have died: {}", run.stderr);
        assert!(run.stderr.contains(&format!("failpoint {point}")), "{}", run.stderr);
    };
    let staging_is_empty =
        |env: &Env| fs::read_dir(env.store().join(".staging")).map_or(true, |mut d| d.next().is_none());

    // Creating: killed before the rename, nothing new is visible.
    let env = Env::initialised();
    let before = env.list();
    crash(&env, &["cert", "create-self-signed", "--name", "Web", "--san", "web.example.test"], "entry-staged");
    assert!(!staging_is_empty(&env), "the interrupted write should have left its staging dir");
    let run = env.run(&["--json", "cert", "list"]);
    assert!(run.stderr.contains("removed 1 leftover(s) of an interrupted write"), "{}", run.stderr);
    assert_eq!(run.json().as_array().unwrap(), &before);
    assert!(staging_is_empty(&env));
    // ...and after the rename, the new entry is complete.
    crash(&env, &["cert", "create-self-signed", "--name", "Web", "--san", "web.example.test"], "entry-renamed");
    let list = env.list();
    let web = list.iter().find(|c| c["id"] == "web").expect("renamed entry is in place");
    assert_eq!(web["has_private_key"], true);

    // Changing the default: the state file is the old one or the new one.
    let state = env.store().join("state.toml");
    let old_state = fs::read(&state).unwrap();
    crash(&env, &["cert", "set-default", "web"], "file-staged");
    assert_eq!(fs::read(&state).unwrap(), old_state);
    env.run(&["cert", "list"]).ok();
    assert!(staging_is_empty(&env));
    crash(&env, &["cert", "set-default", "web"], "file-renamed");
    assert!(fs::read_to_string(&state).unwrap().contains("default = \"web\""));

    // Deleting: once unlinked, the entry is gone even though its files were not yet removed.
    crash(&env, &["cert", "delete", "web", "--force"], "entry-unlinked");
    assert!(!env.store().join("certs/web").exists());
    let list = env.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["default"], true, "the default fell back to the factory certificate");
    assert!(staging_is_empty(&env));
}

/// A renewal replaces an entry in two renames (old out, new in). A crash between them
/// leaves the complete new entry staged; the next writer moves it into place.
#[test]
fn a_replacement_cut_off_between_its_renames_is_finished() {
    let env = Env::initialised();
    create(&env, "Lab", "lab.example.test");
    let store = env.store();
    let entry = store.join("certs/lab");
    let before = fs::read_to_string(entry.join("cert.pem")).unwrap();
    // The state a crash at "entry-moved-out" leaves: the old entry in .staging as
    // deleted-*, the new one staged as replace.<id>.*, nothing at certs/lab.
    fs::create_dir_all(store.join(".staging")).unwrap();
    fs::rename(&entry, store.join(".staging/replace.lab.new-1-2-3")).unwrap();
    let out = env.run(&["cert", "list"]);
    assert!(out.ok().contains("lab"), "{}", out.stdout);
    assert!(out.stderr.contains("moved into place"), "{}", out.stderr);
    assert_eq!(fs::read_to_string(entry.join("cert.pem")).unwrap(), before);
    assert_eq!(fs::read_dir(store.join(".staging")).unwrap().count(), 0);
}

/// Copies entry directory `from` to `to` by hand (an operator restoring a backup), with
/// another friendly name.
fn copy_entry(from: &std::path::Path, to: &std::path::Path, name: &str) {
    fs::create_dir(to).unwrap();
    for f in ["cert.pem", "key.pem", "meta.toml"] {
        fs::copy(from.join(f), to.join(f)).unwrap();
    }
    let meta = fs::read_to_string(to.join("meta.toml")).unwrap();
    let line = meta.lines().find(|l| l.starts_with("friendly_name")).unwrap().to_owned();
    fs::write(to.join("meta.toml"), meta.replace(&line, &format!("friendly_name = \"{name}\""))).unwrap();
}

#[test]
fn the_index_follows_commands_and_hand_changes() {
    let env = Env::initialised();
    let s = env.store();
    create(&env, "Alpha", "alpha.idx.test");
    // A writer that changed the store left its index: a line per entry with its names.
    let index = fs::read_to_string(s.join(".index")).unwrap();
    let line = index.lines().find(|l| l.starts_with("c\talpha\t")).unwrap_or_else(|| panic!("{index}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields[2], "Alpha");
    assert!(fields[4..].contains(&"alpha.idx.test"), "{line}");
    // Kept current by commands: a duplicate friendly name is refused, a deleted one is free.
    create(&env, "Beta", "beta.idx.test");
    let dup = env.run(&["cert", "create-self-signed", "--name", "beta", "--san", "x.idx.test"]);
    assert_eq!(dup.code, Some(1));
    assert!(dup.stderr.contains("already used by certificate beta"), "{}", dup.stderr);
    env.run(&["cert", "delete", "beta", "--force"]).ok();
    create(&env, "Beta", "beta2.idx.test");

    // An entry added by hand is seen at once: certs/ changed behind the index's back.
    copy_entry(&s.join("certs/alpha"), &s.join("certs/handmade"), "Hand Made");
    let dup = env.run(&["cert", "create-self-signed", "--name", "hand made", "--san", "y.idx.test"]);
    assert_eq!(dup.code, Some(1), "{}", dup.stderr);
    assert!(dup.stderr.contains("already used by certificate handmade"), "{}", dup.stderr);
    let listed = env.run(&["--json", "cert", "list", "--filter", "Hand"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], "handmade");
    // A name lookup goes by the index and is checked against the entry.
    assert!(env.run(&["cert", "show", "Hand Made"]).ok().contains("handmade"));

    // A damaged index is rebuilt, never believed; a failed command does not write it.
    // (A current index, written by a successful command, keeps its header: only the
    // damage can make it be refused.)
    create(&env, "Gamma", "gamma.idx.test");
    let saved = fs::read_to_string(s.join(".index")).unwrap();
    let header = saved.lines().next().unwrap();
    fs::write(s.join(".index"), format!("{header}\nc\tno-such\n")).unwrap();
    let before = env.tree();
    let dup = env.run(&["cert", "create-self-signed", "--name", "ALPHA", "--san", "z.idx.test"]);
    assert!(dup.stderr.contains("already used by certificate alpha"), "{}", dup.stderr);
    assert_eq!(env.tree(), before, "a refused command changed the store");
    let listed = env.run(&["--json", "cert", "list", "--filter", "idx.test"]).json();
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alpha", "beta", "gamma", "handmade"]);
}
