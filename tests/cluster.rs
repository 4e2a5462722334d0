//! The cluster against real etcd: three etcd members (Debian's etcd-server) and three
//! Portcullis nodes on loopback, checked with `openssl s_client` (serials compared) and
//! `etcdctl`; ACME through Debian's pebble behind a round-robin forwarder to the nodes'
//! port-80 listeners, so validation mostly reaches a node other than the renewer.
//! Orders are counted at pebble ("Added order" in its log).
//!
//! The tests take turns (one lock): each runs six daemons, and two cores shared by
//! three clusters would turn etcd's election timeouts into flakes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pebble::{Pebble, served, wait_for};
use common::{BIN, Env, Proc, free_port, metric, openssl_ok, served_der};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The binary the nodes run: this build's, or `PORTCULLIS_TEST_BIN` (a release build,
/// to measure propagation as deployed; docs/PERFORMANCE.md).
fn bin() -> String {
    std::env::var("PORTCULLIS_TEST_BIN").unwrap_or_else(|_| BIN.to_owned())
}

fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=3s")
        .args(args)
        .output()
        .expect("etcdctl (make test installs etcd-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Three etcd members on loopback (the recipe of ../shared/notes/etcd.md).
struct Etcd {
    dir: PathBuf,
    client: [u16; 3],
    peer: [u16; 3],
    members: [Option<Proc>; 3],
}

impl Etcd {
    fn start(env: &Env) -> Self {
        let dir = env.path("etcd");
        fs::create_dir_all(&dir).unwrap();
        let mut e = Self {
            dir,
            client: [free_port(), free_port(), free_port()],
            peer: [free_port(), free_port(), free_port()],
            members: [None, None, None],
        };
        for i in 0..3 {
            e.launch(i);
        }
        e.wait_healthy();
        e
    }

    fn launch(&mut self, i: usize) {
        let cluster: Vec<String> = (0..3).map(|j| format!("m{j}=http://127.0.0.1:{}", self.peer[j])).collect();
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("m{i}.log"))).unwrap();
        let child = Command::new("etcd")
            .arg("--name")
            .arg(format!("m{i}"))
            .arg("--data-dir")
            .arg(self.dir.join(format!("m{i}.data")))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", self.client[i]))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", self.client[i]))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer[i]))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer[i]))
            .arg("--initial-cluster")
            .arg(cluster.join(","))
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "portcullis-test"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (make test installs etcd-server)");
        self.members[i] = Some(Proc(child));
    }

    fn endpoints(&self) -> String {
        self.client.iter().map(|p| format!("http://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    fn wait_healthy(&self) {
        let eps = self.endpoints();
        wait_for(30, "etcd healthy", || etcdctl(&eps, &["endpoint", "health"]).0.then_some(()));
    }

    fn kill(&mut self, i: usize) {
        self.members[i] = None;
    }
}

/// One Portcullis node: its directory, configuration, ports and daemon.
struct Node {
    name: String,
    dir: PathBuf,
    tls: u16,
    admin: u16,
    http: u16,
    daemon: Option<Proc>,
}

impl Node {
    fn config(&self) -> PathBuf {
        self.dir.join("portcullis.toml")
    }

    fn cli(&self, args: &[&str]) -> common::Run {
        let out = Command::new(bin()).arg("--config").arg(self.config()).args(args).output().unwrap();
        common::Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn start(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log")).unwrap();
        let child = Command::new(bin())
            .arg("--config")
            .arg(self.config())
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(Proc(child));
        for p in [self.tls, self.admin] {
            common::wait_port(p);
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().unwrap().0.id()
    }

    fn is_renewer(&self) -> bool {
        metric(self.admin, "portcullis_cluster_is_renewer ") == Some(1.0)
    }
}

/// Three etcd members and three nodes sharing one cluster key; node 0 ran `cluster
/// init`, the others `cluster join`.
struct Cluster {
    env: Env,
    etcd: Etcd,
    nodes: Vec<Node>,
}

impl Cluster {
    /// `etcd_for(i)`: node i's `[cluster] etcd` list; `extra`: more configuration.
    fn start(
        tls: [u16; 3],
        http: [u16; 3],
        etcd_for: impl Fn(usize, &Etcd) -> String,
        extra: impl Fn(usize, &Node) -> String,
    ) -> Self {
        let env = Env::empty();
        let etcd = Etcd::start(&env);
        let key = env.path("cluster.key");
        fs::write(&key, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").unwrap();
        fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let mut nodes = Vec::new();
        for (i, (tls, http)) in tls.into_iter().zip(http).enumerate() {
            let dir = env.path(&format!("n{i}"));
            fs::create_dir_all(&dir).unwrap();
            let tls = if tls == 0 { free_port() } else { tls };
            let node = Node { name: format!("n{i}"), dir, tls, admin: free_port(), http, daemon: None };
            let extra = extra(i, &node);
            // The listener orders on demand where the node's [acme] says which names may be.
            let on_demand = if extra.contains("[acme.on_demand]") { "on_demand = true\n" } else { "" };
            let text = format!(
                "[store]\ndir = \"store\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{}\"]\n{on_demand}\
                 [[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"hello\\n\" }}\n\
                 [cluster]\netcd = [{}]\nnode = \"{}\"\nsecret_key_file = \"{}\"\n{}",
                node.admin,
                node.tls,
                etcd_for(i, &etcd),
                node.name,
                key.display(),
                extra
            );
            fs::write(node.config(), text).unwrap();
            nodes.push(node);
        }
        nodes[0].cli(&["init"]).ok();
        nodes[0].cli(&["cluster", "init"]).ok();
        for n in &nodes[1..] {
            n.cli(&["cluster", "join"]).ok();
        }
        let mut c = Self { env, etcd, nodes };
        for n in &mut c.nodes {
            n.start();
        }
        c
    }

    fn endpoints_list(etcd: &Etcd) -> String {
        etcd.client.iter().map(|p| format!("\"http://127.0.0.1:{p}\"")).collect::<Vec<_>>().join(", ")
    }

    /// A self-signed certificate for `name` made by openssl; returns its files and serial.
    fn make_cert(&self, name: &str) -> (PathBuf, PathBuf, String) {
        let (key, cert) = (self.env.path(&format!("{name}.key")), self.env.path(&format!("{name}.pem")));
        common::openssl_self_signed(
            key.to_str().unwrap(),
            cert.to_str().unwrap(),
            &format!("/CN={name}"),
            "30",
            &["-addext", &format!("subjectAltName=DNS:{name}")],
        );
        let serial = openssl_ok(&["x509", "-noout", "-serial", "-in", cert.to_str().unwrap()], None);
        let serial = serial.trim().trim_start_matches("serial=").trim_start_matches('0').to_ascii_lowercase();
        (key, cert, serial)
    }

    fn renewers(&self) -> Vec<usize> {
        (0..3).filter(|&i| self.nodes[i].daemon.is_some() && self.nodes[i].is_renewer()).collect()
    }
}

impl Drop for Cluster {
    /// A failed test shows what each node logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            keep(self.env.dir.path());
            for n in &self.nodes {
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(400).collect();
                eprintln!("--- {} (last lines) ---", n.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// After a failure: a copy of the test's directory for a post-mortem.
fn keep(dir: &std::path::Path) {
    let to = std::env::temp_dir().join(format!("portcullis-cluster-failed-{}", std::process::id()));
    let _ = fs::create_dir_all(&to);
    let _ = Command::new("cp").arg("-a").arg(dir).arg(&to).status();
    eprintln!("test directory kept in {}", to.display());
}

struct KeepOnPanic<'a>(&'a Env);

impl Drop for KeepOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            keep(self.0.dir.path());
        }
    }
}

/// The serial a node serves for `sni` (openssl s_client), if the handshake succeeds.
fn serial(port: u16, sni: &str) -> Option<String> {
    served(port, sni).map(|(s, _)| s)
}

/// A TCP forwarder on a free port: round-robin over `targets`; `cut` closes every
/// connection and refuses new ones until it is set back.
struct Forwarder {
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    targets: Arc<Mutex<Vec<u16>>>,
}

impl Forwarder {
    fn start(port: u16, targets: Vec<u16>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let targets = Arc::new(Mutex::new(targets));
        let (c, o, t) = (Arc::clone(&cut), Arc::clone(&open), Arc::clone(&targets));
        std::thread::spawn(move || {
            let next = AtomicUsize::new(0);
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let targets = t.lock().unwrap().clone();
                if c.load(Ordering::SeqCst) || targets.is_empty() {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                // Like a load balancer with health checks: a node that refuses is skipped.
                let first = next.fetch_add(1, Ordering::Relaxed);
                let Some(server) = (0..targets.len())
                    .find_map(|k| TcpStream::connect(("127.0.0.1", targets[(first + k) % targets.len()])).ok())
                else {
                    continue;
                };
                {
                    let mut open = o.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Self { cut, open, targets }
    }

    fn set_targets(&self, targets: Vec<u16>) {
        *self.targets.lock().unwrap() = targets;
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn a_change_on_one_node_is_served_by_all_and_keys_stay_sealed() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let c = Cluster::start([0; 3], [0; 3], |_, e| Cluster::endpoints_list(e), |_, _| String::new());

    // Propagation: 50 imports on node 0, each timed until all three nodes serve its
    // serial by SNI.
    let (mut times, mut command) = (Vec::new(), Vec::new());
    for k in 0..50 {
        let name = format!("p{k}.test");
        let (key, cert, want) = c.make_cert(&name);
        let der_file = c.env.path(&format!("{name}.der"));
        openssl_ok(
            &["x509", "-outform", "DER", "-in", cert.to_str().unwrap(), "-out", der_file.to_str().unwrap()],
            None,
        );
        let want_der = fs::read(&der_file).unwrap();
        let start = Instant::now();
        c.nodes[0].cli(&["cert", "import", cert.to_str().unwrap(), key.to_str().unwrap()]).ok();
        command.push(start.elapsed().as_secs_f64());
        // Every node polled in turn by an in-process client, without sleeping: the
        // figure is the propagation, not a poll interval or process starts.
        let mut waiting: Vec<&Node> = c.nodes.iter().collect();
        while !waiting.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10), "{name} not served by all nodes after 10 s");
            waiting.retain(|n| served_der(n.tls, &name).as_ref() != Some(&want_der));
        }
        times.push(start.elapsed().as_secs_f64());
        // And the independent check: openssl sees the serial openssl gave it.
        for n in &c.nodes {
            assert_eq!(serial(n.tls, &name).as_deref(), Some(want.as_str()), "{name} on {}", n.name);
        }
    }
    times.sort_by(f64::total_cmp);
    command.sort_by(f64::total_cmp);
    let (median, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    println!(
        "propagation over 50 imports (import command started to served on all 3): median {median:.3} s, p99 {p99:.3} s; \
         the import command alone: median {:.3} s",
        percentile(&command, 0.5)
    );
    // The measured goal is p99 < 1 s (docs/PERFORMANCE.md); the bound here only catches
    // a broken sync, not a slow machine.
    assert!(p99 < 5.0, "p99 {p99}");

    // Every node reports the same applied revision; none lags.
    let status = c.nodes[1].cli(&["--json", "cluster", "status"]).json();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{status}");
    assert!(nodes.iter().all(|n| n["lag"] == 0), "{status}");

    // Two nodes create the same friendly name at the same moment: exactly one wins (the
    // other fails naming etcd or the taken name), and the store holds one entry.
    let mut racers: Vec<std::process::Child> = (0..2)
        .map(|i| {
            Command::new(bin())
                .arg("--config")
                .arg(c.nodes[i].config())
                .args(["cert", "create-self-signed", "--name", "Same", "--common-name", "same.test"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<Option<i32>> = racers.iter_mut().map(|p| p.wait().unwrap().code()).collect();
    assert_eq!(codes.iter().filter(|c| **c == Some(0)).count(), 1, "{codes:?}");
    let list = c.nodes[2].cli(&["--json", "cert", "list"]).json();
    let same = list.as_array().unwrap().iter().filter(|e| e["friendly_name"] == "Same").count();
    assert_eq!(same, 1, "{list}");

    // The status page, in a real browser, and /status.json show the cluster.
    let dom = common::chromium(&c.env, &["--dump-dom", &format!("http://127.0.0.1:{}/status", c.nodes[1].admin)]);
    let table = &dom[dom.find("<table id=\"cluster\">").unwrap_or_else(|| panic!("no cluster table:\n{dom}"))..];
    let table = &table[..table.find("</table>").unwrap()];
    assert!(table.contains("<td>n1</td>") && table.contains("in sync"), "{table}");
    let views: Vec<serde_json::Value> = c
        .nodes
        .iter()
        .map(|n| {
            let (ok, body) = common::curl(&[&format!("http://127.0.0.1:{}/status.json", n.admin)]);
            assert!(ok);
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["cluster"].clone()
        })
        .collect();
    assert!(
        views.iter().all(|v| v["connected"] == true && v["applied_revision"] == views[0]["applied_revision"]),
        "{views:?}"
    );
    assert_eq!(views.iter().filter(|v| v["is_renewer"] == true).count(), 1, "{views:?}");

    // No private key in clear in etcd: not as PEM, not as the PEM body of any key file.
    let eps = c.etcd.endpoints();
    let (ok, dump, err) = etcdctl(&eps, &["get", "--prefix", "/portcullis"]);
    assert!(ok, "{err}");
    assert!(!dump.contains("PRIVATE KEY"), "a private key in clear in etcd");
    for k in 0..50 {
        let pem = fs::read_to_string(c.env.path(&format!("p{k}.test.key"))).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!dump.contains(&body[..40]), "key p{k} in clear in etcd");
    }
    // The sealed value opens with the cluster key, by an independent AES-GCM (python).
    let (ok, sealed, _) = etcdctl(&eps, &["get", "--print-value-only", "/portcullis/store/certs/p0-test/key.pem"]);
    assert!(ok && sealed.starts_with("PCS1"), "{sealed:?}");

    // A node with another cluster key is refused with a clear error, and writes nothing.
    let other = c.env.path("other.key");
    fs::write(&other, "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n").unwrap();
    fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let bad_dir = c.env.path("intruder");
    fs::create_dir_all(&bad_dir).unwrap();
    let text = fs::read_to_string(c.nodes[2].config()).unwrap().replace(
        &format!("secret_key_file = \"{}\"", c.env.path("cluster.key").display()),
        &format!("secret_key_file = \"{}\"", other.display()),
    );
    fs::write(bad_dir.join("portcullis.toml"), text.replace("node = \"n2\"", "node = \"intruder\"")).unwrap();
    let out =
        Command::new(bin()).arg("--config").arg(bad_dir.join("portcullis.toml")).args(["cluster", "join"]).output();
    let out = out.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open this cluster's secrets") && err.contains("other.key"), "{err}");
    assert!(!bad_dir.join("store").join("certs").exists(), "the refused join materialised something");

    // Key rotation (docs/CLUSTER.md): with the new key current and the old one kept,
    // `cluster rekey` seals every private value again; then the new key alone reads the
    // cluster and the old key alone is refused.
    let new_key = c.env.path("new.key");
    fs::write(&new_key, "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0\n").unwrap();
    fs::set_permissions(&new_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let rotating = c.env.path("rotating");
    fs::create_dir_all(&rotating).unwrap();
    let base = fs::read_to_string(c.nodes[0].config()).unwrap().replace("node = \"n0\"", "node = \"rotating\"");
    let old_line = format!("secret_key_file = \"{}\"", c.env.path("cluster.key").display());
    fs::write(
        rotating.join("portcullis.toml"),
        base.replace(
            &old_line,
            &format!(
                "secret_key_file = \"{}\"\nprevious_secret_key_files = [\"{}\"]",
                new_key.display(),
                c.env.path("cluster.key").display()
            ),
        )
        .replace("dir = \"store\"", &format!("dir = \"{}\"", rotating.join("store").display())),
    )
    .unwrap();
    let run = |dir: &std::path::Path, args: &[&str]| {
        let out = Command::new(bin()).arg("--config").arg(dir.join("portcullis.toml")).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&rotating, &["cluster", "rekey"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("52 private value(s) sealed again"), "{out}"); // 50 imports, Same, the factory default
    let (_, after, _) = etcdctl(&eps, &["get", "--prefix", "/portcullis/store/"]);
    assert!(!after.contains("PRIVATE KEY"));
    let only_new = c.env.path("only-new");
    fs::create_dir_all(&only_new).unwrap();
    fs::write(
        only_new.join("portcullis.toml"),
        base.replace(&old_line, &format!("secret_key_file = \"{}\"", new_key.display()))
            .replace("dir = \"store\"", &format!("dir = \"{}\"", only_new.join("store").display())),
    )
    .unwrap();
    let (code, _, err) = run(&only_new, &["cluster", "join"]);
    assert_eq!(code, Some(0), "{err}");
    let key0 = fs::read(only_new.join("store/certs/p0-test/key.pem")).unwrap();
    assert_eq!(key0, fs::read(c.nodes[0].dir.join("store/certs/p0-test/key.pem")).unwrap(), "the key read back");
    let out = c.nodes[2].cli(&["cluster", "join"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("cannot open this cluster's secrets"), "{}", out.stderr);
}

#[test]
fn quorum_loss_partition_compaction_and_cold_start() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Node 2 reaches etcd only through a forwarder the test can cut.
    let fwd_port = free_port();
    let fwd = Forwarder::start(fwd_port, Vec::new());
    let mut c = Cluster::start(
        [0; 3],
        [0; 3],
        |i, e| {
            if i == 2 {
                fwd.set_targets(vec![e.client[0]]);
                format!("\"http://127.0.0.1:{fwd_port}\"")
            } else {
                Cluster::endpoints_list(e)
            }
        },
        |_, _| String::new(),
    );
    let (key, cert, s1) = c.make_cert("q.test");
    c.nodes[0].cli(&["cert", "import", cert.to_str().unwrap(), key.to_str().unwrap()]).ok();
    for n in &c.nodes {
        wait_for(10, "q.test everywhere", || (serial(n.tls, "q.test").as_deref() == Some(s1.as_str())).then_some(()));
    }
    wait_for(20, "one renewer", || (c.renewers().len() == 1).then_some(()));

    // Quorum loss: two of three members die.
    c.etcd.kill(1);
    c.etcd.kill(2);
    // Admin writes fail fast, naming etcd, and change nothing.
    let before = fs::read_to_string(c.nodes[0].dir.join("store/state.toml")).unwrap();
    let t = Instant::now();
    let out = c.nodes[0].cli(&["cert", "create-self-signed", "--name", "Lost", "--common-name", "lost.test"]);
    let took = t.elapsed();
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("etcd"), "{}", out.stderr);
    assert!(took < Duration::from_secs(8), "the write hung {took:?}");
    assert_eq!(fs::read_to_string(c.nodes[0].dir.join("store/state.toml")).unwrap(), before);
    // Every node keeps serving: a bounded handshake loop, no failure, while the
    // renewer's lease runs out (nobody renews without quorum).
    let deadline = Instant::now() + Duration::from_secs(14);
    let mut handshakes = 0;
    while Instant::now() < deadline {
        for n in &c.nodes {
            assert_eq!(serial(n.tls, "q.test").as_deref(), Some(s1.as_str()), "a handshake failed on {}", n.name);
            handshakes += 1;
        }
    }
    assert!(handshakes > 30, "{handshakes}");
    assert_eq!(c.renewers(), Vec::<usize>::new(), "a renewer without quorum");
    // Quorum back: nodes catch up without restart, and a renewer is elected again.
    c.etcd.launch(1);
    c.etcd.launch(2);
    c.etcd.wait_healthy();
    let (key, cert, s2) = c.make_cert("after.test");
    wait_for(20, "writes accepted again", || {
        (c.nodes[1].cli(&["cert", "import", cert.to_str().unwrap(), key.to_str().unwrap()]).code == Some(0))
            .then_some(())
    });
    for n in &c.nodes {
        wait_for(15, "after.test everywhere", || {
            (serial(n.tls, "after.test").as_deref() == Some(s2.as_str())).then_some(())
        });
    }
    wait_for(20, "a renewer again", || (c.renewers().len() == 1).then_some(()));

    // Partition and compaction: node 2 is cut off while changes land and etcd compacts
    // its history; on reconnect it cannot resume its watch and reads everything again.
    fwd.set_cut(true);
    let (key, cert, s3) = c.make_cert("during.test");
    c.nodes[0].cli(&["cert", "import", cert.to_str().unwrap(), key.to_str().unwrap()]).ok();
    c.nodes[0].cli(&["cert", "delete", "after-test", "--force"]).ok();
    let eps = c.etcd.endpoints();
    let (_, st, _) = etcdctl(&eps, &["endpoint", "status", "-w", "json"]);
    let rev: i64 = st.split("\"revision\":").nth(1).unwrap().split([',', '}']).next().unwrap().parse().unwrap();
    let (ok, _, err) = etcdctl(&eps, &["compact", &rev.to_string()]);
    assert!(ok, "{err}");
    // Cut off, node 2 still serves its last good copy.
    assert_eq!(serial(c.nodes[2].tls, "after.test").as_deref(), Some(s2.as_str()));
    fwd.set_cut(false);
    wait_for(20, "node 2 caught up after compaction", || {
        (serial(c.nodes[2].tls, "during.test").as_deref() == Some(s3.as_str())).then_some(())
    });
    wait_for(10, "after.test gone from node 2", || {
        (serial(c.nodes[2].tls, "after.test") != Some(s2.clone())).then_some(())
    });
    assert!(c.nodes[2].log().contains("compacted"), "{}", c.nodes[2].log());

    // Cold start with etcd down: a restarted node serves its copy.
    for i in 0..3 {
        c.etcd.kill(i);
    }
    c.nodes[1].daemon = None;
    c.nodes[1].start();
    assert_eq!(serial(c.nodes[1].tls, "during.test").as_deref(), Some(s3.as_str()));
    assert_eq!(serial(c.nodes[1].tls, "q.test").as_deref(), Some(s1.as_str()));
    // And catches up once etcd is back.
    for i in 0..3 {
        c.etcd.launch(i);
    }
    c.etcd.wait_healthy();
    let (key, cert, s4) = c.make_cert("back.test");
    wait_for(20, "writes accepted again", || {
        (c.nodes[0].cli(&["cert", "import", cert.to_str().unwrap(), key.to_str().unwrap()]).code == Some(0))
            .then_some(())
    });
    wait_for(20, "back.test on the restarted node", || {
        (serial(c.nodes[1].tls, "back.test").as_deref() == Some(s4.as_str())).then_some(())
    });
}

/// The serials node `n` serves for the ACME hostnames (None: not all served yet).
fn acme_serials(n: &Node, hosts: &[String]) -> Option<Vec<String>> {
    hosts.iter().map(|h| served(n.tls, h).filter(|(_, i)| i.contains("Pebble")).map(|(s, _)| s)).collect()
}

/// Waits until every live node serves a set of serials for `hosts` that differs in
/// every position from `old` (a complete round), and all live nodes agree.
fn next_round(c: &Cluster, hosts: &[String], old: &[String], secs: u64) -> Vec<String> {
    wait_for(secs, "a complete renewal round on every node", || {
        let live: Vec<&Node> = c.nodes.iter().filter(|n| n.daemon.is_some()).collect();
        let first = acme_serials(live[0], hosts)?;
        if first.iter().zip(old).any(|(a, b)| a == b) {
            return None;
        }
        live[1..].iter().all(|n| acme_serials(n, hosts).as_ref() == Some(&first)).then_some(first)
    })
}

#[test]
fn exactly_one_renewer_orders_through_failover_and_fencing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let env = Env::empty();
    let fwd_port = free_port();
    // 45-second certificates: renewed 15 s before expiry, so rounds come every ~30 s. A
    // round is ten sequential orders (15-19 s on a loaded 2-core machine); with 30-second
    // certificates the next round began as one ended, and the per-round order counts
    // below caught its first order.
    let pebble = Pebble::start(&env, 45, fwd_port);
    let _keep = KeepOnPanic(&env);
    let hosts: Vec<String> = (0..10).map(|i| format!("c{i}.test")).collect();
    let certs: String =
        hosts.iter().map(|h| format!("[[acme.certificate]]\nhostnames = [\"{h}\"]\n")).collect::<Vec<_>>().concat();
    let alerts = env.path("alerts.txt");
    let acme = |node: &Node| {
        format!(
            "[alerts]\nalert_command = \"echo \\\"$PORTCULLIS_ALERT_KIND $PORTCULLIS_ALERT_ID {}\\\" >> {}\"\n\
             {}",
            node.name,
            alerts.display(),
            pebble.acme_section_on(&format!("\"127.0.0.1:{}\"", node.http), &certs)
        )
    };
    let http = [free_port(), free_port(), free_port()];
    let fwd = Forwarder::start(fwd_port, http.to_vec());
    let mut c = Cluster::start([0; 3], http, |_, e| Cluster::endpoints_list(e), |_, n| acme(n));

    // Round 1 (first issuance) and round 2 (renewal): ten orders each, from one node.
    let none = vec![String::new(); 10];
    let r1 = next_round(&c, &hosts, &none, 90);
    assert_eq!(pebble.orders(), 10, "round 1: one order per certificate");
    let r2 = next_round(&c, &hosts, &r1, 60);
    assert_eq!(pebble.orders(), 20, "round 2: one order per certificate");

    // Failover: the renewer is killed (-9) in the middle of round 3's first order;
    // another node completes the round within the lease TTL and a few seconds.
    let r = c.renewers();
    assert_eq!(r.len(), 1, "{r:?}");
    let dead = r[0];
    let placed = c.nodes[dead].log().matches("order placed").count();
    wait_for(40, "round 3 starts", || (c.nodes[dead].log().matches("order placed").count() > placed).then_some(()));
    let killed_at = Instant::now();
    c.nodes[dead].daemon = None;
    let log = c.nodes[dead].log();
    let in_flight = log.rsplit("order placed for ").next().unwrap().lines().next().unwrap().trim().to_owned();
    let k = hosts.iter().position(|h| *h == in_flight).unwrap();
    let before = pebble.orders();
    // The order cut off is completed by the next renewer within the lease TTL and a few
    // seconds (each certificate is committed as soon as it is issued).
    wait_for(30, "the cut-off order completed elsewhere", || {
        c.nodes
            .iter()
            .filter(|n| n.daemon.is_some())
            .all(|n| serial(n.tls, &in_flight).is_some_and(|s| s != r2[k]))
            .then_some(())
    });
    let took = killed_at.elapsed();
    println!(
        "failover: {in_flight}, cut off by kill -9 of the renewer, served renewed {:.1} s later",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10 + 8), "{took:?}");
    let r3 = next_round(&c, &hosts, &r2, 60);
    // The order in flight was recorded: the new renewer resumes it instead of ordering
    // again, so round 3 takes no extra order (at most one if the kill beat the record).
    let round3 = pebble.orders() - before;
    println!("failover: round 3 took {round3} new orders after the kill (+1 in flight)");
    assert!((9..=10).contains(&round3), "round 3 took {round3} orders after the kill");
    let resumed = c.nodes.iter().filter(|n| n.daemon.is_some()).any(|n| n.log().contains("resuming the order"));
    assert!(resumed || round3 == 10, "neither resumed nor ordered again");

    // Fencing: the new renewer is stopped in the middle of round 4 past its lease; a
    // third node takes over; resumed, the old one's writes are refused.
    let r = wait_for(20, "one renewer", || Some(c.renewers()).filter(|r| r.len() == 1));
    let paused = r[0];
    let placed = c.nodes[paused].log().matches("order placed").count();
    wait_for(40, "round 4 starts", || (c.nodes[paused].log().matches("order placed").count() > placed).then_some(()));
    let before = pebble.orders();
    let pid = c.nodes[paused].pid().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // A paused node accepts connections and never answers: the load balancer's health
    // check takes it out of rotation (pebble validates from three perspectives at once).
    fwd.set_targets((0..3).filter(|&i| i != paused && i != dead).map(|i| http[i]).collect());
    // The survivor other than the paused one completes the round.
    let other = (0..3).find(|&i| i != dead && i != paused).unwrap();
    wait_for(60, "round 4 done by the other node", || {
        let s = acme_serials(&c.nodes[other], &hosts)?;
        s.iter().zip(&r3).all(|(a, b)| a != b).then_some(s)
    });
    let committed_before = c.nodes[paused].log().matches("renewer pass committed").count();
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    fwd.set_targets(http.to_vec());
    // Resumed: it learns it was deposed and commits nothing; it serves what the successor
    // committed. (Not compared with r4 itself: the successor may already be in round 5.)
    wait_for(20, "the paused node notices", || c.nodes[paused].log().contains("no longer").then_some(()));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        c.nodes[paused].log().matches("renewer pass committed").count(),
        committed_before,
        "the deposed renewer committed after SIGCONT"
    );
    wait_for(10, "the paused node serves what the successor serves", || {
        let theirs = acme_serials(&c.nodes[other], &hosts)?;
        (acme_serials(&c.nodes[paused], &hosts)? == theirs && theirs.iter().zip(&r3).all(|(a, b)| a != b)).then_some(())
    });
    // One extra order at most: the one the paused renewer had in flight.
    let round4 = pebble.orders() - before;
    println!("fencing: round 4 took {round4} orders after the pause (+1 in flight)");
    assert!((9..=10).contains(&round4), "round 4 took {round4} orders");
    // Nothing duplicated: one entry per certificate.
    let list = c.nodes[other].cli(&["--json", "cert", "list"]).json();
    let acme_entries = list.as_array().unwrap().iter().filter(|e| e["source"] == "acme").count();
    assert_eq!(acme_entries, 10, "{list}");

    // Quorum loss: nobody renews, yet certificates entering their error window alert.
    let _ = fs::remove_file(&alerts);
    c.etcd.kill(1);
    c.etcd.kill(2);
    wait_for(20, "no renewer without quorum", || c.renewers().is_empty().then_some(()));
    let frozen = pebble.orders();
    let line = wait_for(60, "an error alert from a node cut off", || {
        fs::read_to_string(&alerts).ok().and_then(|t| t.lines().find(|l| l.starts_with("error c")).map(str::to_owned))
    });
    println!("alert while cut off: {line}");
    assert_eq!(pebble.orders(), frozen, "an order without quorum");
    for n in c.nodes.iter().filter(|n| n.daemon.is_some()) {
        assert!(acme_serials(n, &hosts).is_some(), "{} stopped serving", n.name);
    }
}

/// Waits (60 s per node) until every node serves a pebble certificate for `sni`, and
/// checks that they all serve the same one.
fn issued_everywhere(c: &Cluster, sni: &str) {
    let serials: Vec<String> = c
        .nodes
        .iter()
        .map(|n| {
            wait_for(60, &format!("{sni} from pebble on {}", n.name), || {
                served(n.tls, sni).filter(|(_, i)| i.contains("Pebble")).map(|(s, _)| s)
            })
        })
        .collect();
    assert!(serials.iter().all(|s| *s == serials[0]), "{serials:?}");
}

#[test]
fn tls_alpn_01_is_answered_by_every_node() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let env = Env::empty();
    let fwd_port = free_port();
    // Pebble validates TLS-ALPN-01 against the forwarder, which spreads its three
    // perspectives over the three nodes' TLS listeners: no plain-HTTP listener anywhere.
    let pebble = Pebble::start_with_tls(&env, 7_776_000, free_port(), fwd_port);
    let _keep = KeepOnPanic(&env);
    let tls = [free_port(), free_port(), free_port()];
    let _fwd = Forwarder::start(fwd_port, tls.to_vec());
    let acme = pebble.acme_section_on(
        "[]",
        "[[acme.certificate]]\nhostnames = [\"alpn.test\"]\n[acme.on_demand]\nallow = [\"*.od.test\"]",
    );
    let c = Cluster::start(tls, [0; 3], |_, e| Cluster::endpoints_list(e), |_, _| acme.clone());
    issued_everywhere(&c, "alpn.test");
    assert_eq!(pebble.orders(), 1, "one order");
    let renewer = c.renewers();
    assert_eq!(renewer.len(), 1);
    assert!(c.nodes[renewer[0]].log().contains("alpn.test: tls-alpn-01 challenge ready"));
    // On demand: first handshakes for one new name on all three nodes at once. One node
    // claims the name and orders it (the others serve the fallback meanwhile); the
    // certificate reaches every node through etcd.
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.tls).collect();
    let first: Vec<_> = ports
        .iter()
        .flat_map(|&p| (0..3).map(move |_| std::thread::spawn(move || served_der(p, "shop.od.test"))))
        .collect();
    for t in first {
        t.join().unwrap();
    }
    issued_everywhere(&c, "shop.od.test");
    assert_eq!(pebble.orders(), 2, "one order for a name first seen on three nodes at once");
    let ordered: Vec<usize> = (0..3).filter(|&i| c.nodes[i].log().contains("order placed for shop.od.test")).collect();
    assert_eq!(ordered.len(), 1, "{ordered:?}");
}

#[test]
fn dns_01_wildcard_by_the_renewer_served_by_all() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let env = Env::empty();
    let (_knot, dns_port, secret) = common::knot::knot(&env);
    let pebble = Pebble::start_with_dns(&env, 7_776_000, dns_port);
    let _keep = KeepOnPanic(&env);
    // Through the built-in RFC 2136 client; dns_command is placed by the same step of the
    // renewer's order (tested on one node in tests/acme.rs).
    let key = env.write("tsig.key", &format!("{secret}\n"));
    let acme = pebble.acme_section_on(
        "[]",
        &format!(
            "[[acme.dns_update]]\nzone = \"example.test\"\nserver = \"127.0.0.1:{dns_port}\"\nkey_name = \"portcullis-test\"\n\
             secret_file = \"{}\"\ncheck_servers = [\"127.0.0.1:{dns_port}\"]\n\
             [[acme.certificate]]\nhostnames = [\"*.example.test\", \"example.test\"]\nchallenge = \"dns-01\"",
            key.display()
        ),
    );
    let c = Cluster::start([0; 3], [0; 3], |_, e| Cluster::endpoints_list(e), |_, _| acme.clone());
    issued_everywhere(&c, "x.example.test");
    assert_eq!(pebble.orders(), 1, "one order, by the renewer alone");
    let placed: Vec<usize> = (0..3).filter(|&i| c.nodes[i].log().contains("TXT record _acme-challenge")).collect();
    assert_eq!(placed, c.renewers(), "only the renewer updated the zone");
    wait_for(10, "TXT records removed", || {
        common::knot::txt(dns_port, "_acme-challenge.example.test").is_empty().then_some(())
    });
}
