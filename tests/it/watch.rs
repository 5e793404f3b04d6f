//! `watch` rules: an app URL polled while its topic has streams, published when it changes,
//! once across instances.

use crate::redis::server::RedisServer;
use crate::support::*;
use hyper::{Response, StatusCode};
use ssegate::config::{BrokerKind, Config};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const RULE: &str = "
watch:
  - name: jobs
    topic: job/{job}
    url: /api/jobs/{job}/status
    every: 20ms
    event: job.status
    headers: { Authorization: Bearer app-token }
";

/// A job-status app: `/api/jobs/{id}/status` answers the job's current state (with an
/// ETag when `etag` is on), counting polls per job, and refuses polls without the token.
#[derive(Default)]
struct Jobs {
    state: Mutex<HashMap<String, String>>,
    polls: Mutex<HashMap<String, usize>>,
}

impl Jobs {
    fn set(&self, job: &str, state: &str) {
        self.state.lock().unwrap().insert(job.into(), state.into());
    }
    fn polls(&self, job: &str) -> usize {
        self.polls.lock().unwrap().get(job).copied().unwrap_or(0)
    }
}

async fn jobs_app(jobs: Arc<Jobs>, etag: bool) -> Upstream {
    upstream(move |req| {
        let jobs = Arc::clone(&jobs);
        async move {
            let job = req
                .uri()
                .path()
                .strip_prefix("/api/jobs/")
                .and_then(|p| p.strip_suffix("/status"))
                .unwrap_or("")
                .to_owned();
            *jobs.polls.lock().unwrap().entry(job.clone()).or_default() += 1;
            if req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                != Some("Bearer app-token")
            {
                let mut resp = Response::new(full("no"));
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
                return resp;
            }
            let state = jobs.state.lock().unwrap().get(&job).cloned();
            let Some(state) = state else {
                let mut resp = Response::new(full("no such job"));
                *resp.status_mut() = StatusCode::NOT_FOUND;
                return resp;
            };
            let tag = format!("\"{state}\"");
            if etag
                && req
                    .headers()
                    .get("if-none-match")
                    .and_then(|v| v.to_str().ok())
                    == Some(tag.as_str())
            {
                let mut resp = Response::new(full(""));
                *resp.status_mut() = StatusCode::NOT_MODIFIED;
                return resp;
            }
            let mut resp = Response::new(full(format!(r#"{{"job":"{job}","state":"{state}"}}"#)));
            if etag {
                resp.headers_mut().insert("etag", tag.parse().unwrap());
            }
            resp
        }
    })
    .await
}

fn with_rule(c: &mut Config, up: &Upstream) {
    let text = format!("upstream: {}\n{RULE}", up.uri);
    c.watch = ssegate::config::parse(&text, &|_: &str| None)
        .unwrap()
        .watch;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_topic_is_polled_and_each_change_published_once() {
    for etag in [false, true] {
        let jobs = Arc::new(Jobs::default());
        jobs.set("1", "queued");
        jobs.set("2", "queued");
        let up = jobs_app(Arc::clone(&jobs), etag).await;
        let mut config = test_config(&up.uri);
        with_rule(&mut config, &up);
        let gw = sidecar(config).await;
        assert_eq!(
            jobs.polls("1"),
            0,
            "nothing is polled before a stream follows it"
        );

        // The first stream's topic is polled at once: its page gets the current state.
        let mut c = SseClient::open(gw.proxy, "/events?topic=job/1").await;
        let ev = c.event().await;
        assert_eq!(ev.event.as_deref(), Some("job.status"));
        assert_eq!(ev.data, r#"{"job":"1","state":"queued"}"#);
        jobs.set("1", "running");
        assert_eq!(c.event().await.data, r#"{"job":"1","state":"running"}"#);
        // Unchanged polls publish nothing: once polled a few more times, a sentinel is
        // still the next event.
        let seen = jobs.polls("1");
        eventually("more polls", || async { jobs.polls("1") >= seen + 3 }).await;
        publish_ok(gw.admin, r#"{"topic":"job/1","data":"sentinel"}"#).await;
        assert_eq!(c.event().await.data, "sentinel", "etag: {etag}");

        // The last stream leaving stops the polling: while job/2's poller makes progress,
        // job/1's count moves by at most the one poll in flight.
        drop(c);
        eventually("the stream gone", || async {
            connections(gw.admin).await == 0
        })
        .await;
        let after_close = jobs.polls("1");
        let mut other = SseClient::open(gw.proxy, "/events?topic=job/2").await;
        assert_eq!(other.event().await.data, r#"{"job":"2","state":"queued"}"#);
        let two = jobs.polls("2");
        eventually("job/2 polled again", || async {
            jobs.polls("2") >= two + 3
        })
        .await;
        assert!(jobs.polls("1") <= after_close + 1, "job/1 still polled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_url_publishes_nothing_and_is_counted() {
    let jobs = Arc::new(Jobs::default());
    let up = jobs_app(Arc::clone(&jobs), false).await;
    let mut config = test_config(&up.uri);
    with_rule(&mut config, &up);
    let gw = sidecar(config).await;
    // No job 9 yet: the app answers 404, which publishes nothing.
    let mut c = SseClient::open(gw.proxy, "/events?topic=job/9").await;
    eventually("the failure counted", || async {
        let m = body_bytes(
            send(
                gw.admin,
                request("GET", "/metrics", &[], bytes::Bytes::new()),
            )
            .await,
        )
        .await;
        String::from_utf8_lossy(&m)
            .contains(r#"ssegate_watch_polls_total{rule="jobs",outcome="poll_failed"}"#)
    })
    .await;
    jobs.set("9", "created");
    // Backing off, it polls again and the first event is the job's state, nothing before.
    assert_eq!(c.event().await.data, r#"{"job":"9","state":"created"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_instances_on_redis_a_change_is_published_once() {
    let redis = RedisServer::start().await;
    let jobs = Arc::new(Jobs::default());
    jobs.set("1", "queued");
    let up = jobs_app(Arc::clone(&jobs), false).await;
    let mut gates = Vec::new();
    for _ in 0..2 {
        let mut config = test_config(&up.uri);
        config.broker.kind = BrokerKind::Redis;
        config.broker.redis.url = redis.url();
        with_rule(&mut config, &up);
        let gw = sidecar(config).await;
        eventually("connected to redis", || async {
            let (s, _) = call_json(
                gw.admin,
                request("GET", "/readyz", &[], bytes::Bytes::new()),
            )
            .await;
            s == StatusCode::OK
        })
        .await;
        gates.push(gw);
    }
    let mut a = SseClient::open(gates[0].proxy, "/events?topic=job/1").await;
    assert_eq!(a.event().await.data, r#"{"job":"1","state":"queued"}"#);
    let mut b = SseClient::open(gates[1].proxy, "/events?topic=job/1").await;
    for state in ["running", "done"] {
        jobs.set("1", state);
        let want = format!(r#"{{"job":"1","state":"{state}"}}"#);
        assert_eq!(a.event().await.data, want);
        assert_eq!(b.event().await.data, want);
    }
    // Both instances keep following the topic; a few more polls later, a sentinel is
    // still the next event on each: no instance published a version twice.
    let seen = jobs.polls("1");
    eventually("more polls", || async { jobs.polls("1") >= seen + 4 }).await;
    publish_ok(gates[1].admin, r#"{"topic":"job/1","data":"sentinel"}"#).await;
    assert_eq!(a.event().await.data, "sentinel");
    assert_eq!(b.event().await.data, "sentinel");
}

#[test]
fn check_names_a_url_placeholder_the_topic_does_not_define() {
    let text = "upstream: http://127.0.0.1:3000\nwatch:\n  - name: j\n    topic: job/{job}\n    url: /api/{id}\n";
    let e = ssegate::config::parse(text, &|_: &str| None).unwrap_err();
    let e = &e.0[0];
    assert_eq!((e.path.as_str(), e.line), ("watch[0].url", Some(5)));
    assert!(
        e.message.contains("{id} is not a parameter of the topic"),
        "{e}"
    );
}
