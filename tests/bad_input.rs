//! Bad input: exit status 1, one line on stderr naming the flag, and a store that is
//! byte-for-byte what it was.

mod common;

use common::Env;

const SAN: &[&str] = &["--san", "ok.example.test"];

/// (extra arguments, text the one error line must contain)
fn cases() -> Vec<(Vec<&'static str>, &'static str)> {
    let with_san = |args: &[&'static str]| -> Vec<&'static str> { args.iter().chain(SAN).copied().collect() };
    vec![
        (with_san(&["--name", "A", "--country", "XX"]), "--country \"XX\""),
        (with_san(&["--name", "A", "--country", "USA"]), "--country \"USA\""),
        (with_san(&["--name", "A", "--country", "1"]), "--country"),
        (
            vec!["--name", "A", "--san", "www.*.example.test"],
            "--san \"www.*.example.test\": a wildcard is only allowed",
        ),
        (vec!["--name", "A", "--san", "w*.example.test"], "--san \"w*.example.test\""),
        (vec!["--name", "A", "--san", "*.*.example.test"], "--san \"*.*.example.test\""),
        (vec!["--name", "A", "--san", "*.test"], "--san \"*.test\""),
        (vec!["--name", "A", "--san", "bad_name.example.test"], "--san \"bad_name.example.test\": invalid character"),
        (vec!["--name", "A", "--san", "sp ace.example.test"], "--san \"sp ace.example.test\""),
        (vec!["--name", "A", "--san=-lead.example.test"], "--san \"-lead.example.test\": label"),
        (vec!["--name", "A", "--san", "a..example.test"], "--san \"a..example.test\""),
        (vec!["--name", "A", "--san", "bücher.example.test"], "--san \"bücher.example.test\""),
        (vec!["--name", "A", "--san", ""], "--san \"\""),
        (vec!["--name", "A", "--san", "a.example.test", "--san", "A.example.test"], "given more than once"),
        (vec!["--name", "A", "--san", "10.0.0.1", "--san", "10.0.0.1"], "--san \"10.0.0.1\": given more than once"),
        (vec!["--name", "A", "--common-name", "Title only"], "--san: a server certificate needs"),
        (with_san(&["--name", ""]), "--name \"\": must not be empty"),
        (with_san(&["--name", "   "]), "--name \"   \": must not be empty"),
        (with_san(&["--name", "Existing"]), "--name \"Existing\": already used by certificate existing"),
        (with_san(&["--name", "existing"]), "--name \"existing\": already used"),
        (with_san(&["--name", "Pending"]), "--name \"Pending\": already used by pending request pending"),
        (with_san(&["--name", "PORTCULLIS DEFAULT"]), "already used by certificate portcullis-default"),
        (with_san(&["--name", "A", "--key", "rsa-1024"]), "--key \"rsa-1024\": unknown key type"),
        (with_san(&["--name", "A", "--key", "dsa"]), "--key \"dsa\""),
        (with_san(&["--name", "A", "--common-name", ""]), "--common-name \"\": must not be empty"),
        (with_san(&["--name", "A", "--org", &*"x".repeat(65).leak()]), "--org"),
    ]
}

fn assert_refused(env: &Env, args: &[&str], want: &str) {
    let before = env.tree();
    let run = env.run(args);
    assert_eq!(run.code, Some(1), "{args:?}: exit status\nstderr: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: want exactly one line on stderr, got:\n{}", run.stderr);
    assert!(lines[0].starts_with("error: ") && lines[0].contains(want), "{args:?}: {:?} lacks {want:?}", lines[0]);
    assert_eq!(run.stdout, "", "{args:?}: nothing on stdout");
    assert_eq!(env.tree(), before, "{args:?}: the store changed");
}

#[test]
fn bad_input_is_refused_with_one_line_and_no_change() {
    let env = Env::initialised();
    env.run(&["cert", "create-self-signed", "--name", "Existing", "--san", "existing.example.test"]).ok();
    env.run(&["cert", "request", "--name", "Pending", "--san", "pending.example.test"]).ok();
    for command in ["create-self-signed", "request"] {
        for (extra, want) in cases() {
            let args: Vec<&str> = ["cert", command].iter().copied().chain(extra.iter().copied()).collect();
            assert_refused(&env, &args, want);
        }
    }
    for days in ["0", "3651"] {
        assert_refused(
            &env,
            &["cert", "create-self-signed", "--name", "A", "--san", "a.test.example", "--days", days],
            "--days",
        );
    }
    assert_refused(&env, &["cert", "delete", "portcullis-default"], "cannot be deleted");
    assert_refused(&env, &["cert", "delete", "nope"], "\"nope\": no certificate or request");
    assert_refused(&env, &["cert", "set-default", "nope"], "\"nope\"");
    assert_refused(&env, &["cert", "set-default", "pending"], "pending: is a pending request");
    assert_refused(&env, &["cert", "show", "nope"], "\"nope\"");
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::initialised();
    let before = env.tree();
    for args in [vec!["cert", "create-self-signed"], vec!["cert", "frobnicate"], vec!["--bogus"]] {
        let run = env.run(&args);
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
    }
    let run = env.run(&["cert", "create-self-signed", "--name", "A", "--san", "a.example.test", "--days", "soon"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--days"), "{}", run.stderr);
    assert_eq!(env.tree(), before);
}

#[test]
fn bad_config_names_file_line_and_key() {
    let env = Env::initialised();
    let cfg =
        env.write("portcullis.toml", "[store]\ndir = \"store\"\n\n[admin]\nlisten = \"127.0.0.1:9900\"\nport = 1\n");
    let before = env.tree();
    let run = env.run(&["--config", cfg.to_str().unwrap(), "cert", "list"]);
    assert_eq!(run.code, Some(1));
    let line = run.stderr.trim();
    assert!(!line.contains('\n'), "{line}");
    assert!(line.contains("portcullis.toml:6:1: unknown field `port`"), "{line}");
    // `status` shows the error, and what a running daemon still serves (none here).
    let run = env.run(&["--config", cfg.to_str().unwrap(), "status"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains("config error: ") && run.stdout.contains(":6:1: unknown field `port`"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("daemon:       not answering"), "{}", run.stdout);
    assert_eq!(env.tree(), before);
}

#[test]
fn example_config_is_valid_and_bad_handlers_are_named() {
    let env = Env::initialised();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/portcullis.toml");
    let run = env.run(&["--config", example, "check-config"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let cfg = env.write(
        "bad.toml",
        "[[listener]]\nname = \"x\"\nbind = [\"127.0.0.1:1\"]\n[[route]]\nhosts = [\"*\"]\nhandler = { type = \"http_proxy\", upstreams = [\"nohost\"] }\n",
    );
    let run = env.run(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("bad.toml:4: route[0].handler: upstreams: \"nohost\" is not host:port"),
        "{}",
        run.stderr
    );
    let cfg = env.write("bad2.toml", "[[route]]\nhosts = [\"*\"]\nhandler = { type = \"teleport\" }\n");
    let run = env.run(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("type \"teleport\" is not a handler"), "{}", run.stderr);
    for (value, expected) in
        [("0", "bad3.toml:3: http.redirect_port: must be a port, 1 to 65535"), ("70000", "bad3.toml:3:")]
    {
        let cfg = env.write("bad3.toml", &format!("[http]\nlisten = [\"127.0.0.1:1\"]\nredirect_port = {value}\n"));
        let run = env.run(&["--config", cfg.to_str().unwrap(), "check-config"]);
        assert_eq!(run.code, Some(1));
        assert!(run.stderr.contains(expected) && !run.stderr.trim().contains('\n'), "{value}: {}", run.stderr);
    }
}
