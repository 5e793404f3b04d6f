//! End-to-end tests in a real browser: headless Chromium (Debian's `chromium` package)
//! driven by `playwright-core` from npm, one node script per test in `tests/browser/`.
//!
//! Each test starts ssegate in-process on port 0 (or the real binary, for `ssegate demo`),
//! runs `node tests/browser/SCRIPT.mjs ARGS…`, and asserts on the one line of JSON the
//! script prints. The scripts wait on page conditions, never on the clock.
//!
//! Run alone with `cargo test --test browser`. Chromium is required: without it these
//! tests fail, naming the package (CI installs it). `node_modules` is installed on first
//! use with `npm ci --prefix tests/browser`. Screenshots are left in
//! `target/tmp/browser/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

#[path = "it/support.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

// ---- Prerequisites -------------------------------------------------------------------

/// Debian's Chromium (or `SSEGATE_CHROMIUM`). Missing is a failure, never a skip: a green
/// run must mean the browser tests ran.
fn chromium() -> PathBuf {
    let path = std::env::var_os("SSEGATE_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.is_file(),
        "Chromium not found at {}: the browser tests need Debian's `chromium` package \
         (apt-get install chromium; .ci/run installs it)",
        path.display()
    );
    path
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Node, and `playwright-core` installed from the lock file (once per test run).
fn node_ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let version = Command::new("node").arg("--version").output();
        assert!(
            version.is_ok_and(|o| o.status.success()),
            "node not found: the browser tests need Node.js 20 or later (Debian: nodejs, npm)"
        );
        let dir = scripts_dir();
        let installed = ["playwright-core", "htmx.org", "htmx-ext-sse"]
            .iter()
            .all(|m| {
                dir.join("node_modules")
                    .join(m)
                    .join("package.json")
                    .is_file()
            });
        if !installed {
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .output()
                .expect("npm not found: the browser tests need npm (Debian: npm)");
            assert!(
                out.status.success(),
                "npm ci --prefix tests/browser failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// Where screenshots go: `target/tmp/browser/`.
fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One Chromium at a time: the machine is small, and the scripts' waits are generous but
/// not unbounded.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `node tests/browser/{script} {args}` and returns the JSON it printed last.
async fn node(script: &str, args: &[String]) -> Value {
    node_ready();
    let chromium = chromium();
    let mut cmd = Command::new("node");
    cmd.arg(scripts_dir().join(script))
        .args(args)
        .current_dir(scripts_dir())
        .env("SSEGATE_CHROMIUM", chromium);
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("node could not be started");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node {script} failed ({}):\n{stderr}",
        out.status
    );
    eprintln!("node {script}: {:.1?}", started.elapsed());
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("node {script} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
        .collect()
}

/// The blank page the scripts open, so that the streams are same-origin.
const PAGE: &str = "<!doctype html><meta charset=utf-8><title>ssegate browser test</title>";

async fn page_upstream() -> Upstream {
    upstream(|_req| async {
        let mut resp = Response::new(full(PAGE));
        resp.headers_mut()
            .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
        resp
    })
    .await
}

// ---- A relay the test can sever ------------------------------------------------------

/// Cuts and restores the relay's connections, as a network failure would.
struct RelaySwitch {
    cut: AtomicBool,
    generation: watch::Sender<u64>,
}

impl RelaySwitch {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            cut: AtomicBool::new(false),
            generation: watch::channel(0).0,
        })
    }

    /// Closes every relayed connection; new ones are closed at once until `restore`.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// A TCP relay on 127.0.0.1:0 to `target`, controlled by `switch`.
async fn relay(
    target: SocketAddr,
    switch: Arc<RelaySwitch>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            // Subscribed before the check, so a cut that races this accept still closes it.
            let mut cuts = switch.generation.subscribe();
            if switch.cut.load(Ordering::SeqCst) {
                continue; // dropped: the browser sees the connection closed
            }
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cuts.changed() => {}
                }
            });
        }
    });
    (addr, task)
}

// ---- Tests ---------------------------------------------------------------------------

/// `/_ssegate/client.js` on the real public listener: headers, revalidation, and a 404 that
/// is never proxied (the upstream answers "app" to everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_js_is_served_on_the_public_listener() {
    let (gate, _up) = sidecar_with(|_| {}).await;
    let resp = send(
        gate.proxy,
        request("GET", "/_ssegate/client.js", &[], Bytes::new()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(h["cache-control"], "public, max-age=300");
    let etag = h["etag"].to_str().unwrap().to_owned();
    let body = body_bytes(resp).await;
    assert_eq!(body, ssegate::client::CLIENT_JS.as_bytes());

    let again = request(
        "GET",
        "/_ssegate/client.js",
        &[("if-none-match", &etag)],
        Bytes::new(),
    );
    let resp = send(gate.proxy, again).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()["etag"], etag.as_str());
    assert!(body_bytes(resp).await.is_empty());

    let dts = send(
        gate.proxy,
        request("GET", "/_ssegate/client.d.ts", &[], Bytes::new()),
    )
    .await;
    assert_eq!(dts.status(), StatusCode::OK);
    assert!(String::from_utf8_lossy(&body_bytes(dts).await).contains("class SsegateSource"));

    let (status, json) = call_json(
        gate.proxy,
        request("GET", "/_ssegate/client.mjs", &[], Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json["error"], "not_found");
}

/// The client's own unit tests, in Node against scripted servers (no browser needed).
#[tokio::test]
async fn client_js_unit_tests_in_node() {
    node_ready();
    let out = tokio::task::spawn_blocking(|| {
        Command::new("node")
            .args(["--test", "unit.test.mjs"])
            .current_dir(scripts_dir())
            .output()
    })
    .await
    .unwrap()
    .expect("node could not be started");
    assert!(
        out.status.success(),
        "node --test unit.test.mjs failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The browser's own EventSource: receives events, and after the server ends the stream
/// (`close: true`) reconnects by itself with `Last-Event-ID` and gets what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_event_source_reconnects_with_last_event_id() {
    let _one = BROWSER.lock().await;
    let up = page_upstream().await;
    let mut config = test_config(&up.uri);
    // The browser waits this long before reconnecting: the window in which the test
    // publishes the events it must get back from the history (ample on a busy machine).
    config.events.retry = Duration::from_secs(2);
    let gate = sidecar(config).await;

    let out = node(
        "native.mjs",
        &[
            format!("http://{}", gate.proxy),
            format!("http://{}", gate.admin),
        ],
    )
    .await;

    let ids = strings(&out["ids"]);
    assert_eq!(ids.len(), 4);
    let got = out["got"].as_array().unwrap();
    let data: Vec<_> = got.iter().map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["one", "two", "three", "four"], "{out}");
    let got_ids: Vec<_> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, ids, "each event arrives once, with its id");

    let streams = out["streams"].as_array().unwrap();
    assert!(streams.len() >= 2, "no reconnect seen: {out}");
    assert_eq!(streams[0]["kind"], "eventsource");
    assert_eq!(streams[0]["last_event_id_header"], Value::Null);
    assert_eq!(
        streams[1]["last_event_id_header"], ids[1],
        "the reconnect resumes after the last event received: {out}"
    );
    assert_eq!(out["requests_before_missed"], 1);
    assert_eq!(
        out["requests_after_missed"], 1,
        "three and four were published while the browser was away"
    );
}

/// `SsegateSource` in Chromium across network drops: resumes after the last id (no gap
/// while the history holds the missed events), then reports `ssegate.gap` when it doesn't.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssegate_source_resumes_across_forced_drops_and_reports_a_gap() {
    let _one = BROWSER.lock().await;
    let switch = RelaySwitch::new();
    let control = Arc::clone(&switch);
    let up = upstream(move |req| {
        let control = Arc::clone(&control);
        async move {
            match (req.method().as_str(), req.uri().path()) {
                ("POST", "/cut") => control.cut(),
                ("POST", "/restore") => control.restore(),
                _ => {
                    let mut resp = Response::new(full(PAGE));
                    resp.headers_mut()
                        .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                    return resp;
                }
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let mut config = test_config(&up.uri);
    config.events.retry = Duration::from_millis(200);
    config.events.history.max_events = 3;
    let gate = sidecar(config).await;
    let (relay_addr, relay_task) = relay(gate.proxy, switch).await;

    let out = node(
        "client.mjs",
        &[
            format!("http://{relay_addr}"),
            format!("http://{}", gate.admin),
            format!("http://{}", up.addr),
        ],
    )
    .await;
    relay_task.abort();

    assert_eq!(
        out["global_is_export"], true,
        "window.SsegateSource is the export"
    );
    let ids = strings(&out["ids"]);
    assert_eq!(ids.len(), 8);
    let got = out["got"].as_array().unwrap();
    let data: Vec<_> = got.iter().map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["a1", "a2", "a3", "b3", "b4", "b5"], "{out}");
    let got_ids: Vec<_> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        got_ids,
        [&ids[0], &ids[1], &ids[2], &ids[5], &ids[6], &ids[7]]
    );

    assert_eq!(out["gaps_after_first_drop"], 0, "{out}");
    let gaps = out["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0]["last_event_id"], ids[2]);
    assert_eq!(gaps[0]["oldest_available"], ids[5]);

    // Every attempt after the first resumes after the last event received at that time.
    let streams = out["streams"].as_array().unwrap();
    assert_eq!(streams[0]["last_event_id_param"], Value::Null);
    assert!(
        streams[0]["url"]
            .as_str()
            .unwrap()
            .contains("topic=browser%2Fclient")
    );
    for s in &streams[1..] {
        let resumed = s["last_event_id_param"].as_str().unwrap();
        assert!(resumed == ids[0] || resumed == ids[2], "{s}");
        assert_eq!(s["kind"], "fetch");
    }
    assert_eq!(out["opens"], 3);
    assert_eq!(out["ready_state_after_close"], 2);
    assert_eq!(out["last_event_id"], ids[7]);
    eventually("the closed source's stream released", || async {
        connections(gate.admin).await == 0
    })
    .await;
}

/// The `ssegate demo` binary, killed when dropped.
struct Demo {
    child: Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ssegate demo` on port 0; returns it with the page URL and the webhook address
/// it printed.
fn start_demo(log: &Path) -> (Demo, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssegate"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo { child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Drains stdout to the end, even once nobody listens: a closed pipe would make the
        // demo's next write fail.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + DEADLINE;
    let (mut url, mut admin) = (None, None);
    while url.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("ssegate demo printed no URL; see {}", log.display()));
        if let Some(rest) = line.trim().strip_prefix("Open ") {
            url = rest.strip_suffix(" in a browser.").map(str::to_owned);
        }
        if let Some(rest) = line.trim().strip_prefix("curl -s ") {
            admin = rest.split("/publish").next().map(str::to_owned);
        }
    }
    (demo, url.unwrap(), admin.unwrap())
}

/// `ssegate demo` in Chromium: live events from both topics, an event published with the
/// printed curl line, and resumption after the page's "drop" button. Screenshots in
/// `target/tmp/browser/demo*.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_renders_live_events_and_resumes() {
    let _one = BROWSER.lock().await;
    let shots = shots_dir();
    let (mut demo, url, admin) = start_demo(&shots.join("demo.log"));
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with('/'),
        "{url}"
    );

    let out = node(
        "demo.mjs",
        &[url, admin.clone(), shots.display().to_string()],
    )
    .await;

    assert_eq!(out["state"], "open");
    assert_eq!(strings(&out["types"]), ["chat", "metrics"]);
    let ids = strings(&out["ids"]);
    assert!(ids.len() >= 4, "{out}");
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    sorted.reverse();
    assert_eq!(ids, sorted, "newest first, no duplicates: {out}");
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len());
    assert!(out["resumed"].as_u64().unwrap() >= 1, "{out}");
    assert_eq!(out["reconnects"], 1);
    assert!(
        strings(&out["chat"])
            .iter()
            .any(|t| t.contains("Hello from the browser test"))
    );
    assert!(out["cpu"].as_str().unwrap().parse::<f64>().is_ok(), "{out}");
    assert!(
        out["curl_hint"]
            .as_str()
            .unwrap()
            .contains(&format!("{admin}/publish"))
    );
    let notes = strings(&out["legacy"]["notes"]);
    assert_eq!(
        notes.first().map(String::as_str),
        Some("A note from the browser test"),
        "the note posted in another window, newest first: {out}"
    );
    assert!(
        out["legacy"]["job"].as_str().unwrap().contains("running"),
        "{out}"
    );
    for shot in ["demo.png", "demo-resumed.png", "demo-legacy.png"] {
        let len = std::fs::metadata(shots.join(shot)).map_or(0, |m| m.len());
        assert!(len > 10_000, "{shot} is missing or blank ({len} bytes)");
    }

    // SIGTERM: the demo stops cleanly.
    let pid = demo.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ssegate demo did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "ssegate demo exited with {status}");
}

/// The page of the legacy app in `htmx_updates_a_second_page_through_a_derive_rule`: a list
/// that refetches its fragment on `sse:items.changed`, and a form that posts an item. No
/// publishing code anywhere.
const LEGACY_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Legacy list</title>
<script src="/htmx.js"></script><script src="/sse.js"></script>
<script>
  document.addEventListener('htmx:sseOpen', () => { window.sseOpen = true; });
  document.addEventListener('htmx:afterSwap', (e) => { if (e.target.id === 'list') e.target.dataset.loaded = '1'; });
</script></head>
<body>
  <div hx-ext="sse" sse-connect="/events?topic=legacy/items">
    <ul id="list" hx-get="/items" hx-trigger="load, sse:items.changed"></ul>
  </div>
  <form hx-post="/items" hx-swap="none"><input name="name"><button>Add</button></form>
</body></html>"#;

/// An app that cannot be changed, made live by ssegate alone: a form POST through ssegate
/// (htmx) publishes through a `derive` rule, and a second page following the topic with
/// htmx's SSE extension refetches its list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htmx_updates_a_second_page_through_a_derive_rule() {
    let _one = BROWSER.lock().await;
    let items = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let store = Arc::clone(&items);
    // The app serves htmx from node_modules: installed first, as for every other test.
    node_ready();
    let modules = scripts_dir().join("node_modules");
    let htmx = std::fs::read(modules.join("htmx.org/dist/htmx.min.js")).unwrap();
    let sse = std::fs::read(modules.join("htmx-ext-sse/dist/sse.min.js")).unwrap();
    let up = upstream(move |req| {
        let store = Arc::clone(&store);
        let (htmx, sse) = (htmx.clone(), sse.clone());
        async move {
            let (kind, body): (&str, Bytes) = match (req.method().as_str(), req.uri().path()) {
                ("GET", "/htmx.js") => ("text/javascript", htmx.into()),
                ("GET", "/sse.js") => ("text/javascript", sse.into()),
                ("GET", "/items") => {
                    let list: String = store
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|i| format!("<li>{i}</li>"))
                        .collect();
                    ("text/html", list.into())
                }
                ("POST", "/items") => {
                    use http_body_util::BodyExt;
                    let form = req.into_body().collect().await.unwrap().to_bytes();
                    let name = form_urlencoded::parse(&form)
                        .find(|(k, _)| k == "name")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    store.lock().unwrap().push(name);
                    let mut resp = Response::new(full(Bytes::new()));
                    *resp.status_mut() = StatusCode::NO_CONTENT;
                    return resp;
                }
                _ => (
                    "text/html; charset=utf-8",
                    Bytes::from_static(LEGACY_PAGE.as_bytes()),
                ),
            };
            let mut resp = Response::new(full(body));
            resp.headers_mut()
                .insert("content-type", kind.parse().unwrap());
            resp
        }
    })
    .await;
    let rules = "upstream: http://127.0.0.1:1\nderive:\n  - name: items\n    match:\n      methods: [POST]\n      path: /items\n    publish:\n      topic: legacy/items\n      event: items.changed\n";
    let mut config = test_config(&up.uri);
    config.derive = ssegate::config::parse(rules, &|_: &str| None)
        .unwrap()
        .derive;
    let gate = sidecar(config).await;

    let shots = shots_dir();
    let out = node(
        "htmx.mjs",
        &[
            format!("http://{}", gate.proxy),
            shots.display().to_string(),
        ],
    )
    .await;
    assert_eq!(
        strings(&out["items"]),
        ["first from htmx", "second"],
        "{out}"
    );
    assert_eq!(items.lock().unwrap().len(), 2);
}

/// The internal listener's dashboard in Chromium: it renders from its SSE feed, its numbers
/// move when a stream opens and events are published, and the tenants table sorts by the
/// clicked header. Screenshot in `target/tmp/browser/dashboard.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_and_its_numbers_move() {
    let _one = BROWSER.lock().await;
    let shots = shots_dir();
    let up = page_upstream().await;
    let mut config = test_config(&up.uri);
    config.tenants.topic = Some(ssegate::config::TenantTopic::parse("tenant/{tenant}/*").unwrap());
    let gw = sidecar(config).await;

    let out = node(
        "dashboard.mjs",
        &[
            format!("http://{}", gw.admin),
            format!("http://{}", gw.proxy),
            shots.display().to_string(),
        ],
    )
    .await;

    assert_eq!(out["before"]["streams"], "0", "{out}");
    assert_eq!(out["before"]["published"], "0 in all", "{out}");
    assert_eq!(out["before"]["broker"], "broker memory: up", "{out}");
    assert_eq!(out["after"]["streams"], "1", "{out}");
    assert_eq!(out["after"]["published"], "2 in all", "{out}");
    assert_eq!(out["after"]["delivered"], "1 in all", "{out}");
    assert_eq!(out["after"]["live"], "live", "{out}");
    assert_eq!(out["after"]["chart_paths"], 3, "{out}");
    assert_eq!(
        strings(&out["after"]["topics"]),
        ["tenant/acme/questions"],
        "{out}"
    );
    let first_column = |rows: &Value| -> Vec<String> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_str().unwrap().to_owned())
            .collect()
    };
    // By streams (the default): acme has one, zeta none. By name, then reversed.
    assert_eq!(first_column(&out["by_streams"]), ["acme", "zeta"], "{out}");
    assert_eq!(out["by_streams"][0][1], "1", "{out}");
    assert_eq!(first_column(&out["by_name"]), ["acme", "zeta"], "{out}");
    assert_eq!(
        first_column(&out["by_name_desc"]),
        ["zeta", "acme"],
        "{out}"
    );
    let len = std::fs::metadata(shots.join("dashboard.png")).map_or(0, |m| m.len());
    assert!(
        len > 10_000,
        "dashboard.png is missing or blank ({len} bytes)"
    );
}

/// The dashboard keeps working when the broker is Redis and Redis is unreachable, and
/// shows the broker as down. Screenshot in `target/tmp/browser/dashboard-broker-down.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_an_unreachable_redis_as_down() {
    let _one = BROWSER.lock().await;
    let shots = shots_dir();
    let up = page_upstream().await;
    // A port nothing listens on: bound, then released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = test_config(&up.uri);
    config.broker.kind = ssegate::config::BrokerKind::Redis;
    config.broker.redis.url = format!("redis://{closed}");
    let gw = sidecar(config).await;

    let out = node(
        "dashboard-down.mjs",
        &[format!("http://{}", gw.admin), shots.display().to_string()],
    )
    .await;
    assert_eq!(out["broker"], "broker redis: DOWN", "{out}");
    assert_eq!(out["broker_class"], "pill bad", "{out}");
    assert_eq!(out["streams"], "0", "{out}");
    let len = std::fs::metadata(shots.join("dashboard-broker-down.png")).map_or(0, |m| m.len());
    assert!(
        len > 10_000,
        "the screenshot is missing or blank ({len} bytes)"
    );
}
