//! `ssegate demo`: ssegate on the embedded defaults in front of a built-in demo app, so a
//! newcomer sees fan-out working in a browser with nothing else installed.
//!
//! Three parts, talking to each other only over HTTP on loopback, as in production:
//! the demo app (a tiny hyper server on `127.0.0.1:0` serving `src/demo/index.html` at `/`),
//! ssegate in front of it (started with [`crate::app::start`]), and a ticker that publishes
//! sample events on `demo/chat` and `demo/metrics` through the real webhook. The page loads
//! `/_ssegate/client.js`, follows both topics and can drop its connection to show
//! resumption.
//!
//! ```text
//! $ ssegate demo
//! ssegate demo is running.
//!   Open http://127.0.0.1:8080/ in a browser.
//! ```

use crate::config::Config;
use crate::response::Body;
use crate::server::{self, Handler};
use crate::shutdown::{self, Shutdown};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The page, with `{{ADMIN}}` standing for the internal listener's address.
const PAGE: &str = include_str!("demo/index.html");

/// The "legacy app" page: `{{NOTES}}` and `{{JOB}}` are rendered on the server.
const LEGACY_PAGE: &str = include_str!("demo/legacy.html");

/// htmx and its SSE extension, served by the demo app (the demo works with no network).
const HTMX: &str = include_str!("demo/vendor/htmx.min.js");
const HTMX_SSE: &str = include_str!("demo/vendor/sse.min.js");

/// What ssegate publishes for the legacy page: the app itself publishes nothing.
const LEGACY_RULES: &str = "
derive:
  - name: demo-notes
    match:
      methods: [POST]
      path: /legacy/notes
    publish:
      topic: demo/notes
      event: notes.changed
watch:
  - name: demo-job
    topic: job/{job}
    url: /legacy/jobs/{job}/status
    every: 1s
    event: job.status
";

/// How long the demo's job takes.
const JOB_TIME: Duration = Duration::from_secs(20);

/// One sample event every this long.
const TICK: Duration = Duration::from_secs(1);

/// A chat message every this many ticks (metrics on every tick).
const CHAT_EVERY: u64 = 3;

/// Where the demo listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoOptions {
    /// The public listener: the page and the streams. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// The internal listener: the publish webhook. Default `127.0.0.1:8081`.
    pub admin_listen: SocketAddr,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            admin_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)),
        }
    }
}

/// Runs the demo until SIGINT or SIGTERM. Errors are one line naming the cause.
pub async fn run(options: DemoOptions) -> Result<(), String> {
    // The app's address must be known before ssegate starts (it is the upstream), and
    // ssegate's before the page is rendered (it shows the curl line): bind, then serve.
    let app_listener = server::bind("demo app", SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(|e| e.to_string())?;
    let app_addr = app_listener.local_addr().map_err(|e| e.to_string())?;
    let upstream: hyper::Uri = format!("http://{app_addr}")
        .parse()
        .map_err(|e| format!("demo app address {app_addr}: {e}"))?;
    let mut config = Config::with_upstream(upstream.clone());
    let rules = crate::config::parse(&format!("upstream: {upstream}\n{LEGACY_RULES}"), &|_| None)
        .map_err(|e| format!("the demo's rules: {e}"))?;
    config.derive = rules.derive;
    config.watch = rules.watch;
    config.listen = options.listen;
    config.admin_listen = options.admin_listen;
    let grace = config.shutdown.grace;
    let mut signals =
        shutdown::Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let running = crate::app::start(config).await.map_err(|e| e.to_string())?;

    let app_shutdown = Shutdown::new();
    let app = Arc::new(DemoApp {
        page: Bytes::from(PAGE.replace("{{ADMIN}}", &running.admin_addr.to_string())),
        notes: std::sync::Mutex::new(vec![
            "Posted before you came: the page renders it on the server.".to_owned(),
        ]),
        job_started: std::sync::Mutex::new(None),
    });
    let app_task = tokio::spawn(server::serve(
        app_listener,
        app,
        app_shutdown.clone(),
        grace,
        false,
    ));
    let ticker = tokio::spawn(tick(running.admin_addr));

    // One write, and no panic if nobody reads stdout any more (println! panics on a closed
    // pipe): the demo goes on serving either way.
    let mut shown = banner(running.proxy_addr, running.admin_addr);
    shown.push('\n');
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), shown.as_bytes());

    let name = signals.terminate().await;
    tracing::info!(signal = name, "signal received");
    ticker.abort();
    running.shutdown();
    app_shutdown.trigger();
    tokio::select! {
        () = running.wait() => {}
        name = signals.terminate() => {
            tracing::warn!(signal = name, "second signal: exiting now");
        }
    }
    app_task.abort();
    Ok(())
}

/// What is printed on start: where to look and how to publish.
fn banner(proxy: SocketAddr, admin: SocketAddr) -> String {
    let proxy = reachable(proxy);
    let admin = reachable(admin);
    format!(
        "ssegate demo is running.\n\
         \x20 Open http://{proxy}/ in a browser.\n\
         \x20 An app with no publishing code at all, made live by ssegate: http://{proxy}/legacy\n\
         \x20 Publish your own event (it appears on the page):\n\
         \x20   curl -s http://{admin}/publish -H 'content-type: application/json' \\\n\
         \x20     -d '{{\"topic\":\"demo/chat\",\"event\":\"chat\",\"data\":{{\"user\":\"you\",\"text\":\"Hello from curl\"}}}}'\n\
         \x20 Follow the same streams from a terminal:\n\
         \x20   curl -N 'http://{proxy}/events?topic=demo/chat&topic=demo/metrics'\n\
         \x20 Ctrl-C stops it."
    )
}

/// An address a browser on this machine can open (`0.0.0.0` is where one listens, not
/// where one connects).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// The demo app: the page at `/`, and a small "legacy" app under `/legacy` that renders
/// HTML and takes form posts, with no publishing code (ssegate's `derive` and `watch` rules
/// make it live).
struct DemoApp {
    page: Bytes,
    notes: std::sync::Mutex<Vec<String>>,
    job_started: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl DemoApp {
    fn notes_html(&self) -> String {
        let notes = self
            .notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        notes
            .iter()
            .rev()
            .map(|n| format!("<li>{}</li>", escape(n)))
            .collect()
    }

    fn job_html(&self) -> String {
        let started = *self
            .job_started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match started {
            None => "Not started.".to_owned(),
            Some(at) => {
                let done = at.elapsed().as_secs_f64() / JOB_TIME.as_secs_f64();
                // Truncation is intended: whole percents.
                let pct = (done.min(1.0) * 100.0) as u32;
                let state = if pct >= 100 { "done" } else { "running" };
                format!("<progress value=\"{pct}\" max=\"100\"></progress> {pct}% — {state}")
            }
        }
    }
}

/// `text` safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Body::full(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

const HTML: &str = "text/html; charset=utf-8";

impl Handler for DemoApp {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        let post = req.method() == Method::POST;
        match req.uri().path() {
            "/" if get => return html(StatusCode::OK, HTML, self.page.clone()),
            "/legacy" if get => {
                let page = LEGACY_PAGE
                    .replace("{{NOTES}}", &self.notes_html())
                    .replace("{{JOB}}", &self.job_html());
                return html(StatusCode::OK, HTML, page);
            }
            "/legacy/htmx.min.js" if get => {
                return html(StatusCode::OK, "text/javascript", HTMX);
            }
            "/legacy/sse.min.js" if get => {
                return html(StatusCode::OK, "text/javascript", HTMX_SSE);
            }
            "/legacy/notes" if get => return html(StatusCode::OK, HTML, self.notes_html()),
            "/legacy/notes" if post => {
                let htmx = req.headers().contains_key("hx-request");
                let form = http_body_util::Limited::new(req.into_body(), 4096)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let text = form_urlencoded::parse(&form)
                    .find(|(k, _)| k == "text")
                    .map(|(_, v)| v.trim().chars().take(200).collect::<String>())
                    .unwrap_or_default();
                if text.is_empty() {
                    return html(StatusCode::BAD_REQUEST, HTML, "A note needs some text.");
                }
                {
                    let mut notes = self
                        .notes
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    notes.push(text);
                    let excess = notes.len().saturating_sub(20);
                    notes.drain(..excess);
                }
                if htmx {
                    return html(StatusCode::NO_CONTENT, HTML, Bytes::new());
                }
                // Without JavaScript, the classic post-redirect-get.
                let mut resp = html(StatusCode::SEE_OTHER, HTML, Bytes::new());
                resp.headers_mut()
                    .insert(hyper::header::LOCATION, HeaderValue::from_static("/legacy"));
                return resp;
            }
            "/legacy/job" if post => {
                *self
                    .job_started
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(tokio::time::Instant::now());
                return html(StatusCode::NO_CONTENT, HTML, Bytes::new());
            }
            "/legacy/jobs/demo/status" if get => {
                return html(StatusCode::OK, HTML, self.job_html());
            }
            _ => {}
        }
        let mut resp = Response::new(Body::full("not found: the demo app serves / and /legacy\n"));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

/// Publishes sample events through the webhook at `admin`, forever.
async fn tick(admin: SocketAddr) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{admin}/publish");
    let mut samples = Samples::new(now_ms());
    let mut interval = tokio::time::interval(TICK);
    let mut failing = false;
    for n in 0u64.. {
        interval.tick().await;
        let mut batch = vec![samples.metrics()];
        if n % CHAT_EVERY == 0 {
            batch.push(samples.chat());
        }
        let body = serde_json::Value::Array(batch).to_string();
        match publish(&client, &uri, body).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("demo ticker publishing again");
            }
            Ok(()) => {}
            // Once per failure streak, not once per tick.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "demo ticker cannot publish");
            }
            Err(_) => {}
        }
    }
}

async fn publish(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &str,
    body: String,
) -> Result<(), String> {
    let req = Request::post(uri)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Plausible sample data: a chat among three people and a server's load.
struct Samples {
    rng: u64,
    chat_line: usize,
    cpu: f64,
}

const PEOPLE: [&str; 3] = ["ada", "grace", "linus"];

const LINES: [&str; 10] = [
    "Is the deploy done?",
    "Rolling out to the second region now.",
    "Dashboards look calm.",
    "Anyone seen the error rate graph?",
    "Back to normal after the cache warmed up.",
    "Coffee?",
    "Merging the fix for the login page.",
    "CI is green.",
    "Who is on call tonight?",
    "Me. Ping me if anything turns red.",
];

impl Samples {
    fn new(seed: u64) -> Self {
        Self {
            rng: seed | 1,
            chat_line: 0,
            cpu: 35.0,
        }
    }

    /// xorshift64: deterministic, dependency-free, plenty for a demo.
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn metrics(&mut self) -> serde_json::Value {
        self.cpu = (self.cpu + (self.unit() - 0.5) * 12.0).clamp(3.0, 97.0);
        // Truncation is intended: a whole number of requests per second.
        let rps = (120.0 + self.cpu * 9.0 + self.unit() * 60.0) as u64;
        serde_json::json!({
            "topic": "demo/metrics",
            "event": "metrics",
            "data": { "cpu": (self.cpu * 10.0).round() / 10.0, "rps": rps, "at": now_ms() },
        })
    }

    fn chat(&mut self) -> serde_json::Value {
        let line = LINES[self.chat_line % LINES.len()];
        let user = PEOPLE[self.chat_line % PEOPLE.len()];
        self.chat_line += 1;
        serde_json::json!({
            "topic": "demo/chat",
            "event": "chat",
            "data": { "user": user, "text": line, "at": now_ms() },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn banner_names_reachable_addresses() {
        let b = banner(
            "0.0.0.0:8080".parse().unwrap(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)),
        );
        assert!(
            b.contains("Open http://127.0.0.1:8080/ in a browser."),
            "{b}"
        );
        assert!(b.contains("curl -s http://127.0.0.1:8081/publish"), "{b}");
    }

    #[test]
    fn samples_are_valid_publish_items() {
        let mut s = Samples::new(42);
        for _ in 0..20 {
            let batch = serde_json::Value::Array(vec![s.metrics(), s.chat()]).to_string();
            let events = crate::publish::parse_body(batch.as_bytes(), usize::MAX);
            assert!(events.is_ok(), "{batch}");
        }
    }
}
