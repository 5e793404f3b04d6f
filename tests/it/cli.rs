//! The command line: the real `ssegate` executable, run in a temporary directory.

use crate::support::*;
use bytes::Bytes;
use hyper::StatusCode;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_ssegate");

/// The executable with `args`, its environment cleared of what would change its behaviour
/// (a `SSEGATE_CONFIG` or `RUST_LOG` of the developer running the tests) and without colours.
fn ssegate(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SSEGATE_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Sends `signal` (`-TERM`, `-KILL`) to the process `pid`, which the test started.
fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// Runs `f` (which waits for the process `pid`) off the runtime; kills the process and
/// fails the test when it takes longer than [`DEADLINE`].
async fn wait_for<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(f)).await {
        Ok(done) => done.unwrap(),
        Err(_) => {
            kill("-KILL", pid);
            panic!("ssegate (pid {pid}) did not exit within {DEADLINE:?}");
        }
    }
}

/// Runs the command to completion.
async fn run(mut cmd: Command) -> Output {
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    wait_for(pid, move || child.wait_with_output().unwrap()).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Writes `text` as `ssegate.yaml` in `dir`.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("ssegate.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_help() {
    let out = run(ssegate(&["--version"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("ssegate {}", env!("CARGO_PKG_VERSION"))
    );

    let out = run(ssegate(&["--help"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = stdout(&out);
    assert!(help.contains("check"), "{help}");
    assert!(help.contains("--config"), "{help}");
    assert!(help.contains("SSEGATE_CONFIG"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_the_shipped_configs() {
    for file in [
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/ssegate.yaml"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.yaml"),
    ] {
        // Their `${…}` all have defaults, so no variable needs to be set.
        let out = run(ssegate(&["check", "--config", file])).await;
        assert_eq!(out.status.code(), Some(0), "{file}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{file}: ok\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_error_with_its_key_and_place() {
    let dir = tempfile::tempdir().unwrap();
    // No `upstream` at all, and five bad values.
    let config = write_config(
        dir.path(),
        "\
listen: 127.0.0.1:0
upstream_timeouts:
  response: forever
trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]
limits:
  connect_rate_per_ip: 10/fortnight
  max_conection: 5
tenants:
  topic: \"t/*\"
",
    );
    let out = run(ssegate(&["check", "--config", path_str(&config)])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0],
        format!("ssegate: {} is not valid:", config.display())
    );
    let expected = [
        "upstream: required key is missing",
        "upstream_timeouts.response: \"forever\" is not a duration (line 3, column 13)",
        "trusted_proxies[1]: \"10.0.0.0/33\" is not an IP network (line 4, column 31)",
        "limits.connect_rate_per_ip: \"10/fortnight\" is not a rate (line 6, column 24)",
        "limits.max_conection: unknown key (line 7, column 3); expected one of: \
         max_connections, max_connections_per_ip, max_connections_per_tenant, \
         connect_rate_per_ip, requests_per_ip, concurrent_requests_per_ip, \
         max_upstream_connections",
        "tenants.topic: \"t/*\" has no {tenant} placeholder (line 9, column 10)",
    ];
    assert_eq!(lines.len(), 1 + expected.len(), "{err}");
    for (line, want) in lines[1..].iter().zip(expected) {
        assert!(line.starts_with(want), "expected {want:?}, got {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_are_interpolated() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "listen: 127.0.0.1:${SSEGATE_TEST_PORT}\nupstream: http://127.0.0.1:3000\n",
    );
    let check = |port: Option<&str>| {
        let mut cmd = ssegate(&["check", "--config", path_str(&config)]);
        match port {
            Some(p) => cmd.env("SSEGATE_TEST_PORT", p),
            None => cmd.env_remove("SSEGATE_TEST_PORT"),
        };
        cmd
    };

    let out = run(check(Some("8099"))).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The value really is substituted: a bad one is reported as the expanded text.
    let out = run(check(Some("three"))).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("listen: \"127.0.0.1:three\" is not a socket address (line 1, column 9)"),
        "{}",
        stderr(&out)
    );

    let out = run(check(None)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "listen: environment variable SSEGATE_TEST_PORT is not set (line 1, column 9)"
        ),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssegate_config_names_the_file_instead_of_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "upstream: http://127.0.0.1:3000\n");
    let mut cmd = ssegate(&["check"]);
    cmd.env("SSEGATE_CONFIG", &good);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}: ok\n", good.display()));

    // The variable is really read: a bad file named by it fails.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listen: nowhere\n").unwrap();
    let mut cmd = ssegate(&["check"]);
    cmd.env("SSEGATE_CONFIG", &bad);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("upstream: required key is missing"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("listen: \"nowhere\""),
        "{}",
        stderr(&out)
    );

    // Neither: told how to give one.
    let out = run(ssegate(&["check"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SSEGATE_CONFIG"), "{}", stderr(&out));
}

/// Removes ANSI escape sequences (`ESC [ … letter`), in case colours are on anyway.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of the `name=` field of a log line.
fn field(line: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(prefix.as_str()))
        .map(str::to_owned)
}

/// A running `ssegate`, its stderr read line by line; killed if the test fails.
struct Daemon {
    child: Option<Child>,
    pid: u32,
    stderr: mpsc::UnboundedReceiver<String>,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut cmd = ssegate(&["--config", path_str(config)]);
        cmd.env("RUST_LOG", "info");
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        let pipe = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                if tx.send(strip_ansi(&line)).is_err() {
                    return;
                }
            }
        });
        Daemon {
            child: Some(child),
            pid,
            stderr: rx,
        }
    }

    /// The next stderr line containing `what`; panics at the end of stderr or after the
    /// deadline.
    async fn line_with(&mut self, what: &str) -> String {
        loop {
            let line = tokio::time::timeout(DEADLINE, self.stderr.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what:?} on stderr within {DEADLINE:?}"))
                .unwrap_or_else(|| panic!("stderr ended without {what:?}"));
            if line.contains(what) {
                return line;
            }
        }
    }

    /// Waits for the process to exit.
    async fn exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        wait_for(self.pid, move || child.wait().unwrap()).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port on 127.0.0.1 that nobody listens on (bound and released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_reports_its_addresses_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: http://127.0.0.1:{}\n\
             shutdown: {{ grace: 2s }}\n",
            closed_port()
        ),
    );
    let mut daemon = Daemon::start(&config);
    let line = daemon.line_with("listening").await;
    let proxy: SocketAddr = field(&line, "proxy")
        .unwrap_or_else(|| panic!("no proxy= in {line:?}"))
        .parse()
        .unwrap();
    let admin: SocketAddr = field(&line, "admin")
        .unwrap_or_else(|| panic!("no admin= in {line:?}"))
        .parse()
        .unwrap();
    assert!(proxy.ip().is_loopback() && proxy.port() != 0, "{line}");
    assert!(admin.ip().is_loopback() && admin.port() != 0, "{line}");
    assert_ne!(proxy, admin);

    // The missing app is named once at start, as a warning.
    let warning = daemon.line_with("proxied requests get 502").await;
    assert!(warning.contains("WARN"), "{warning}");
    let resp = send(admin, request("GET", "/healthz", &[], Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The public listener is up too (and its app is not).
    let (status, json) = call_json(proxy, request("GET", "/", &[], Bytes::new())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{json}");

    kill("-TERM", daemon.pid);
    let status = daemon.exit().await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    daemon.line_with("SIGTERM").await;
}

/// A SIGTERM sent the moment `listening` is logged must still be a graceful shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_listening_is_still_graceful() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: http://127.0.0.1:{}\n",
            closed_port()
        ),
    );
    for attempt in 0..20 {
        let mut daemon = Daemon::start(&config);
        daemon.line_with("listening").await;
        kill("-TERM", daemon.pid);
        let status = daemon.exit().await;
        assert_eq!(status.code(), Some(0), "attempt {attempt}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_port_in_use_is_exit_1_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:0\n\
             upstream: http://127.0.0.1:3000\n"
        ),
    );
    let out = run(ssegate(&["--config", path_str(&config)])).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = strip_ansi(&stderr(&out));
    assert!(
        err.contains(&format!("listen 127.0.0.1:{port}: address already in use")),
        "{err}"
    );
    drop(taken);
}

/// The proxy and admin addresses of a `listening` line.
fn addresses(line: &str) -> (SocketAddr, SocketAddr) {
    let get = |name| field(line, name).unwrap_or_else(|| panic!("no {name}= in {line:?}"));
    (get("proxy").parse().unwrap(), get("admin").parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_limits_refuses_an_invalid_file_and_names_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: http://127.0.0.1:{}\n",
        closed_port()
    );
    let config = write_config(
        dir.path(),
        &format!("{base}limits: {{ max_connections: 1 }}\n"),
    );
    let mut daemon = Daemon::start(&config);
    let (proxy, admin) = addresses(&daemon.line_with("listening").await);
    let mut first = SseClient::open(proxy, "/events?topic=hup").await;
    let refused = SseClient::connect(proxy, "/events?topic=hup", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);

    // Raise the limit: applied, the open stream untouched.
    write_config(
        dir.path(),
        &format!("{base}limits: {{ max_connections: 5 }}\n"),
    );
    kill("-HUP", daemon.pid);
    daemon.line_with("configuration reloaded").await;
    let mut second = SseClient::open(proxy, "/events?topic=hup").await;

    // An invalid file: refused with check's message, the old configuration stays.
    write_config(
        dir.path(),
        &format!("{base}limits: {{ max_connections: lots }}\n"),
    );
    kill("-HUP", daemon.pid);
    let line = daemon.line_with("reload refused").await;
    assert!(
        line.contains("limits.max_connections") && line.contains("line 4"),
        "{line}"
    );
    let mut third = SseClient::open(proxy, "/events?topic=hup").await;

    // A changed listen address needs a restart and says so.
    write_config(
        dir.path(),
        &format!(
            "{}limits: {{ max_connections: 5 }}\n",
            base.replace("listen: 127.0.0.1:0\nadmin", "listen: 127.0.0.1:1\nadmin")
        ),
    );
    kill("-HUP", daemon.pid);
    let line = daemon.line_with("restart").await;
    assert!(line.contains("listen"), "{line}");

    publish_ok(admin, r#"{"topic":"hup","data":"nobody dropped"}"#).await;
    for c in [&mut first, &mut second, &mut third] {
        assert_eq!(c.event().await.data, "nobody dropped");
    }
    kill("-TERM", daemon.pid);
    assert_eq!(daemon.exit().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: http://127.0.0.1:{}\n\
             log: {{ format: json }}\n",
            closed_port()
        ),
    );
    let mut daemon = Daemon::start(&config);
    let line = daemon.line_with("listening").await;
    let json: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let proxy: SocketAddr = json["proxy"].as_str().unwrap().parse().unwrap();
    // A refused stream logs one structured line.
    let (status, _) = call_json(proxy, request("GET", "/events", &[], Bytes::new())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let refused = daemon.line_with("stream refused").await;
    kill("-TERM", daemon.pid);
    assert_eq!(daemon.exit().await.code(), Some(0));
    let mut lines = vec![line, refused];
    while let Ok(l) = daemon.stderr.try_recv() {
        lines.push(l);
    }
    assert!(lines.len() >= 3, "{lines:?}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "{key} missing in {l}");
        }
    }
    let refused: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(refused["reason"], "bad_request");
    assert_eq!(refused["ip"], "127.0.0.1");
}

/// A configuration in `auth.mode: jwt` that accepts HS256 (secret) and ES256 (test key).
fn jwt_config(dir: &Path) -> PathBuf {
    write_config(
        dir,
        &format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: http://127.0.0.1:{}\n\
             auth:\n  mode: jwt\n  jwt:\n    algorithms: [HS256, ES256]\n    secret: s3cret\n\
             \x20   public_key_file: {}/tests/keys/ec.pub\n",
            closed_port(),
            env!("CARGO_MANIFEST_DIR"),
        ),
    )
}

/// `ssegate token ARGS` against `config`: the token it printed, asserting exit 0.
async fn mint(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["token", "--config", path_str(config)];
    all.extend_from_slice(args);
    let out = run(ssegate(&all)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token:?}");
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_token_opens_its_topics_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let config = jwt_config(dir.path());
    let token = mint(&config, &["--sub", "42", "--topic", "tenant/acme/*"]).await;
    let mut daemon = Daemon::start(&config);
    let (proxy, admin) = addresses(&daemon.line_with("listening").await);

    let auth = format!("Bearer {token}");
    let mut ok = SseClient::connect(
        proxy,
        "/events/tenant/acme/questions",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let other = SseClient::connect(
        proxy,
        "/events/tenant/globex/q",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    let none = SseClient::connect(proxy, "/events/tenant/acme/questions", &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);

    publish_ok(
        admin,
        r#"{"topic":"tenant/acme/questions","data":"minted"}"#,
    )
    .await;
    assert_eq!(ok.event().await.data, "minted");
    kill("-TERM", daemon.pid);
    assert_eq!(daemon.exit().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_signed_with_a_private_key_reads_any_topic() {
    let dir = tempfile::tempdir().unwrap();
    let config = jwt_config(dir.path());
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec.key");
    let token = mint(&config, &["--sub", "ops", "--admin", "--key", key]).await;
    let mut daemon = Daemon::start(&config);
    let (proxy, admin) = addresses(&daemon.line_with("listening").await);

    let mut all = SseClient::open(proxy, &format!("/events?topic=*&access_token={token}")).await;
    publish_ok(
        admin,
        r#"[{"topic":"tenant/a/x","data":"1"},{"topic":"user/9/y","data":"2"}]"#,
    )
    .await;
    assert_eq!(all.data(2).await, ["1", "2"]);
    kill("-TERM", daemon.pid);
    assert_eq!(daemon.exit().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ttl_sets_exp_and_uses_the_configured_claim_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "upstream: http://127.0.0.1:3000\nauth:\n  mode: jwt\n  jwt:\n    algorithms: [HS384]\n\
         \x20   secret: s3cret\n    topics_claim: scopes\n    admin_claim: root\n",
    );
    let token = mint(
        &config,
        &[
            "--sub", "42", "--topic", "a", "--topic", "b/*", "--ttl", "90m",
        ],
    )
    .await;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS384);
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "42");
    assert_eq!(claims["scopes"], serde_json::json!(["a", "b/*"]));
    assert!(claims.get("root").is_none(), "{claims}");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 90 * 60, "{claims}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(iat.abs_diff(now) <= 60, "iat {iat}, now {now}");

    let token = mint(&config, &["--sub", "42", "--admin"]).await;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["root"], true, "{claims}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_errors_are_one_clear_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let jwt = jwt_config(dir.path());
    let none = dir.path().join("none.yaml");
    std::fs::write(&none, "upstream: http://127.0.0.1:3000\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let wrong_key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa.key");
    let cases: [(&Path, Vec<&str>, &str); 4] = [
        (&none, vec!["--admin"], "auth.mode is none"),
        (
            &jwt,
            vec!["--admin", "--key", path_str(&missing)],
            "missing.pem: No such file",
        ),
        (
            &jwt,
            vec!["--admin", "--key", wrong_key],
            "not a ES256 private key",
        ),
        (
            &jwt,
            vec!["--topic", "no spaces"],
            "is not a topic or pattern",
        ),
    ];
    for (config, args, want) in cases {
        let mut all = vec!["token", "--config", path_str(config), "--sub", "42"];
        all.extend_from_slice(&args);
        let out = run(ssegate(&all)).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.starts_with("ssegate token: ") && err.contains(want) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_accepts_connections_gets_no_start_up_warning() {
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: http://{}\n",
            app.local_addr().unwrap()
        ),
    );
    let mut daemon = Daemon::start(&config);
    daemon.line_with("listening").await;
    // The start-up check's connection arrives: after it, there is nothing to warn about.
    let pid = daemon.pid;
    let accepted = wait_for(pid, move || app.accept().map(|(conn, _)| conn)).await;
    assert!(accepted.is_ok(), "{accepted:?}");
    kill("-TERM", daemon.pid);
    assert_eq!(daemon.exit().await.code(), Some(0));
    let mut rest = Vec::new();
    while let Some(line) = daemon.stderr.recv().await {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:?}");
    assert!(!rest.iter().any(|l| l.contains("WARN")), "{rest:?}");
}
