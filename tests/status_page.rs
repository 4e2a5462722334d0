//! The status page in a real headless browser (Debian's chromium): the DOM it renders
//! holds the certificate table rows for known certificates, with text escaped.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;

use common::{Env, chromium, free_port};

/// The `<td>` texts of the row `data-id="ID"` in chromium's serialised DOM.
fn row(dom: &str, id: &str) -> Vec<String> {
    let start = dom.find(&format!("<tr data-id=\"{id}\">")).unwrap_or_else(|| panic!("no row for {id} in:\n{dom}"));
    let end = start + dom[start..].find("</tr>").unwrap();
    dom[start..end]
        .split("<td")
        .skip(1)
        .map(|cell| {
            let text = &cell[cell.find('>').unwrap() + 1..];
            // Strip inner tags (<span class=...>), keep entities as chromium wrote them.
            let mut out = String::new();
            let mut in_tag = false;
            for c in text.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => out.push(c),
                    _ => {}
                }
            }
            out.trim().to_owned()
        })
        .collect()
}

#[test]
fn status_page_shows_the_certificate_table() {
    let env = Env::initialised();
    env.run(&[
        "cert",
        "create-self-signed",
        "--name",
        "Support site",
        "--common-name",
        "support.example.com",
        "--san",
        "*.example.com",
    ])
    .ok();
    env.run(&["cert", "create-self-signed", "--name", "Lab <b>x</b>", "--san", "lab.example.com", "--days", "5"]).ok();
    // Long cells: many names, and a root in the trust pool with its 64-digit fingerprint.
    // (A friendly name of 100 characters without a space: a cell that cannot wrap at a
    // space.)
    let long_name = format!("Many-names-{}", "x".repeat(89));
    let mut args = vec!["cert", "create-self-signed", "--name", &long_name];
    let names: Vec<String> = (0..40).map(|i| format!("host-number-{i}.a-rather-long-domain.example.com")).collect();
    for n in &names {
        args.extend(["--san", n]);
    }
    env.run(&args).ok();
    let (root_key, root) = (env.path("root.key"), env.path("root.pem"));
    common::openssl_self_signed(root_key.to_str().unwrap(), root.to_str().unwrap(), "/CN=Layout Test Root", "30", &[]);
    env.run(&["cert", "import", root.to_str().unwrap()]).ok();
    // Expired three days ago (dates by GNU date, certificate by openssl ca).
    let date = |when: &str| {
        let out = Command::new("date").args(["-u", "-d", when, "+%Y%m%d%H%M%SZ"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    common::import_dated(&env, "gone", "gone.test", "gone.test", &date("30 days ago"), &date("3 days ago"));
    env.run(&["cert", "set-default", "support-site"]).ok();
    let (admin, tls) = (free_port(), free_port());
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{tls}\"]\n"
    );
    let _daemon = env.daemon(&config, &[admin, tls]);
    let cfg = env.path("portcullis.toml");
    env.run(&["--config", cfg.to_str().unwrap(), "cert", "assign", "lab-b-x-b", "--listener", "public"]).ok();
    let url = format!("http://127.0.0.1:{admin}/status");
    // The assignment is served after a reload; wait until the JSON says so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, json) = common::curl(&[&format!("{url}.json")]);
        if json.contains("\"public\"")
            && json.contains("lab-b-x-b")
            && json.contains("\"listeners\": [\n        \"public\"")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "assignment not in /status.json: {json}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let dom = chromium(&env, &["--dump-dom", &url]);
    assert!(dom.contains("<h1>Portcullis on "), "{dom}");
    let support = row(&dom, "support-site");
    // Friendly name, issued to, issued by, expiration, SANs, key, default, listeners, ACME, warnings
    assert_eq!(support[0], "Support site");
    assert_eq!(support[1], "support.example.com");
    assert_eq!(support[2], "support.example.com");
    assert!(
        support[3].contains("(expires in 364 days)") || support[3].contains("(expires in 365 days)"),
        "{support:?}"
    );
    assert_eq!(support[4], "support.example.com, *.example.com");
    assert_eq!((support[5].as_str(), support[6].as_str(), support[7].as_str()), ("yes", "yes", ""));
    let lab = row(&dom, "lab-b-x-b");
    // Escaped: the name shows as text, it did not become markup.
    assert_eq!(lab[0], "Lab &lt;b&gt;x&lt;/b&gt;");
    assert!(!dom.contains("<b>x</b>"));
    assert_eq!((lab[6].as_str(), lab[7].as_str()), ("", "public"));
    assert!(lab[9].contains("expires in 5 days"), "{lab:?}");
    // One count of days everywhere: the page, /status.json, `cert show`, the warnings.
    assert!(lab[3].contains("(expires in 5 days)"), "{lab:?}");
    let gone = row(&dom, "gone");
    assert!(gone[3].contains("(expired 3 days ago)"), "{gone:?}");
    let gone_cell = dom.split("<tr data-id=\"gone\">").nth(1).unwrap();
    assert!(gone_cell.split("</tr>").next().unwrap().contains("<td class=\"bad\">"), "{gone_cell}");
    let (_, json) = common::curl(&[&format!("{url}.json")]);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    let cert = |id: &str| status["certificates"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap().clone();
    assert_eq!((cert("lab-b-x-b")["days_left"].as_i64(), cert("gone")["days_left"].as_i64()), (Some(5), Some(-3)));
    assert_eq!(cert("gone")["expiry"], "expired 3 days ago");
    assert!(env.run(&["cert", "show", "lab-b-x-b"]).ok().contains("(expires in 5 days)"));
    assert!(env.run(&["cert", "show", "gone"]).ok().contains("(expired 3 days ago)"));
    let factory = row(&dom, "portcullis-default");
    assert_eq!(factory[0], "Portcullis Default");
    assert!(dom.contains("id=\"listeners\"") && dom.contains(&format!("127.0.0.1:{tls}")));

    // The listener's candidates and fallback; the trust pool with "no" private key.
    assert!(dom.contains("assigned only: lab-b-x-b"), "{dom}");
    let trust = dom.find("<tr data-fingerprint=").map(|i| &dom[i..i + dom[i..].find("</tr>").unwrap()]);
    let trust = trust.unwrap_or_else(|| panic!("no trust pool row in:\n{dom}"));
    assert!(trust.contains("CN=Layout Test Root") && trust.contains("<td>no</td>"), "{trust}");

    // Readable on a phone: the page declares a device-width viewport and renders at 390 px.
    assert!(dom.contains("width=device-width"));
    let shot = env.path("phone.png");
    chromium(&env, &["--window-size=390,844", &format!("--screenshot={}", shot.display()), &url]);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    let shot = env.path("desktop.png");
    chromium(&env, &["--window-size=1280,900", &format!("--screenshot={}", shot.display()), &url]);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    // Laid out by the browser: at 1280 px neither the page nor any table scrolls
    // sideways; at 390 px the page does not (a table may, inside its own box).
    for width in [1280, 390] {
        let (page, wraps) = layout(&env, &url, width);
        assert!(page[0] <= page[1], "{width} px: the page is {} px wide", page[0]);
        if width == 1280 {
            assert!(wraps.iter().all(|o| *o <= 0), "{width} px: a table overflows its box: {wraps:?}");
        }
    }
}

/// (page scrollWidth and innerWidth, overflow of each table box) at `width` px, measured
/// in chromium over the DevTools protocol (tests/support/layout.py).
fn layout(env: &Env, url: &str, width: u32) -> (Vec<i64>, Vec<i64>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/layout.py");
    let profile = env.path(&format!("layout-{width}"));
    // Debian's python3, which has python3-websockets (make test installs it).
    let out = Command::new("/usr/bin/python3")
        .args([script, url, &width.to_string(), profile.to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(out.status.success(), "layout.py: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ints = |a: &serde_json::Value| a.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>();
    (ints(&v["page"]), ints(&v["wraps"]))
}

/// The families and samples of a Prometheus text exposition, parsed by the reference
/// client library's parser (Debian's python3-prometheus-client), as JSON:
/// `{family: {"type": T, "samples": [[name, labels, value], ...]}}`.
fn prometheus_parse(text: &str) -> serde_json::Value {
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = {f.name: {'type': f.type, 'samples': [[s.name, s.labels, s.value] for s in f.samples]}\n\
               for f in text_string_to_metric_families(sys.stdin.read())}\n\
        print(json.dumps(out))";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (make test installs python3-prometheus-client)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the exposition does not parse");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_large_store_is_paged_filtered_and_its_metrics_bounded() {
    let env = Env::initialised();
    // Seven certificates with the factory default; three expire within a week.
    for (name, days) in
        [("Page a", "1"), ("Page b", "90"), ("Page c", "3"), ("Page d", "90"), ("Page e", "6"), ("Page f", "90")]
    {
        let host = format!("{}.paging.test", name.replace(' ', "-").to_lowercase());
        env.run(&["cert", "create-self-signed", "--name", name, "--san", &host, "--days", days]).ok();
    }
    let (admin, tls) = (free_port(), free_port());
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\ncertificate_series = 3\n\
         [[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{tls}\"]\n"
    );
    let _daemon = env.daemon(&config, &[admin, tls]);
    let base = format!("http://127.0.0.1:{admin}");
    let json = |query: &str| -> serde_json::Value {
        let (ok, body) = common::curl(&[&format!("{base}/status.json{query}")]);
        assert!(ok, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["certificates"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
    };

    // A page, in id order, with the counts.
    let all = json("");
    assert_eq!(ids(&all).len(), 7, "{all}");
    let page = json("?limit=2&offset=2");
    assert_eq!(ids(&page), ["page-c", "page-d"]);
    assert_eq!((page["page"]["matched"].as_u64(), page["page"]["total"].as_u64()), (Some(7), Some(7)));
    // The filter: case-insensitive, on a SAN too.
    let found = json("?filter=E.PAGING");
    assert_eq!(ids(&found), ["page-e"]);
    assert_eq!(found["page"]["matched"], 1);
    // A bad parameter is named.
    let (_, body) = common::curl(&["-w", "%{http_code}", &format!("{base}/status.json?limit=none")]);
    assert!(body.starts_with("400 Bad Request: limit: expected a whole number") && body.ends_with("400"), "{body}");

    // In the browser: the page says what it shows, and "next" leads to the next page.
    let dom = chromium(&env, &["--dump-dom", &format!("{base}/status?limit=3")]);
    assert!(dom.contains("showing 1–3 of 7"), "{dom}");
    assert!(dom.contains("<form id=\"filter\""), "{dom}");
    let href = dom.split("id=\"next\" href=\"").nth(1).and_then(|s| s.split('"').next()).expect("a next link");
    let next = chromium(&env, &["--dump-dom", &format!("{base}{}", href.replace("&amp;", "&"))]);
    assert!(next.contains("showing 4–6 of 7") && next.contains("data-id=\"page-d\""), "{next}");
    assert!(!next.contains("data-id=\"page-a\""), "{next}");

    // /metrics: the three soonest to expire, and every certificate in the histogram.
    let (_, text) = common::curl(&[&format!("{base}/metrics")]);
    let m = prometheus_parse(&text);
    let expiry = &m["portcullis_certificate_expiry_seconds"];
    let mut shown: Vec<&str> =
        expiry["samples"].as_array().unwrap().iter().map(|s| s[1]["id"].as_str().unwrap()).collect();
    shown.sort_unstable();
    assert_eq!(shown, ["page-a", "page-c", "page-e"], "{text}");
    let hist = &m["portcullis_certificates_by_expiry_seconds"];
    assert_eq!(hist["type"], "histogram");
    let bucket = |le: &str| {
        hist["samples"].as_array().unwrap().iter().find(|s| s[1]["le"] == le).map(|s| s[2].as_f64().unwrap())
    };
    assert_eq!(bucket("0"), Some(0.0), "{hist}");
    assert_eq!(bucket("86400"), Some(1.0), "{hist}");
    assert_eq!(bucket("604800"), Some(3.0), "{hist}");
    assert_eq!(bucket("+Inf"), Some(7.0), "{hist}");
}
