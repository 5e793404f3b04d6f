//! `derive` rules: proxied requests the app accepted become events, on every forwarding
//! path, published once the response has been relayed, with topics filled only from the
//! path and the app's response headers.

use crate::support::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Response, StatusCode};
use ssegate::config::Config;

const RULES: &str = "
derive:
  - name: questions
    match:
      path: /t/{tenant}/questions/{rest*}
    publish:
      topic: t/{tenant}/questions
      event: questions.changed
  - name: jobs
    match:
      methods: [POST]
      path: /jobs
      status: [201]
    publish:
      topic: job/{response.header.x-job-id}
  - name: items
    match:
      methods: [put]
      path: /items/{id}
      status: [2xx, 304]
    publish:
      topic: items/{id}
      data: response
  - name: notes
    match:
      path: /notes/{id}
    publish:
      topic: notes/{id}
      data: request
  - name: reports
    match:
      path: /reports/slow
    publish:
      topic: reports
      data: response
";

/// The rules above on a config pointing at `up`.
fn config_with_rules(up: &Upstream) -> Config {
    let text = format!("upstream: {}\n{RULES}", up.uri);
    let parsed = ssegate::config::parse(&text, &|_: &str| None).unwrap();
    let mut c = test_config(&up.uri);
    c.derive = parsed.derive;
    c
}

/// The app: `/jobs` answers 201 with `X-Job-Id: 7` and a `Location`; paths containing
/// `fail` answer 500; `/slow` streams its body from `slow`; everything else 200.
async fn app(slow: Option<tokio::sync::mpsc::Receiver<Bytes>>) -> Upstream {
    let slow = std::sync::Mutex::new(slow);
    upstream(move |req| {
        let path = req.uri().path().to_owned();
        let slow = if path.contains("slow") {
            slow.lock().unwrap().take()
        } else {
            None
        };
        async move {
            if let Some(rx) = slow {
                return Response::new(ChannelBody(rx).boxed());
            }
            let mut resp = Response::new(full("done"));
            if path == "/jobs" {
                *resp.status_mut() = StatusCode::CREATED;
                resp.headers_mut().insert("x-job-id", "7".parse().unwrap());
                resp.headers_mut()
                    .insert("location", "/jobs/7".parse().unwrap());
            } else if path.contains("fail") {
                *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            resp
        }
    })
    .await
}

/// A body of unknown length: the request is chunked, which the hand-written path hands to
/// hyper.
fn chunked(data: &'static str) -> UBody {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.try_send(Bytes::from_static(data.as_bytes())).unwrap();
    ChannelBody(rx).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_request_becomes_an_event_on_every_path() {
    let up = app(None).await;
    let gw = sidecar(config_with_rules(&up)).await;
    let mut sub = SseClient::open(gw.proxy, "/events?topic=t/acme/questions").await;

    // The hand-written path (a plain POST with a Content-Length).
    let resp = send(
        gw.proxy,
        request("POST", "/t/acme/questions/q1/answers", &[], "{}"),
    )
    .await;
    assert_eq!(body_bytes(resp).await, "done");
    let ev = sub.event().await;
    assert_eq!(ev.event.as_deref(), Some("questions.changed"));
    let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"method": "POST", "path": "/t/acme/questions/q1/answers",
            "status": 200, "params": {"tenant": "acme", "rest": "q1/answers"}})
    );

    // hyper's HTTP/1.1 path (a chunked request body).
    let mut req = request("PATCH", "/t/acme/questions/q2", &[], Bytes::new());
    *req.body_mut() = chunked("{}");
    assert_eq!(body_bytes(send(gw.proxy, req).await).await, "done");
    let data: serde_json::Value = serde_json::from_str(&sub.event().await.data).unwrap();
    assert_eq!(data["method"], "PATCH");
    assert_eq!(data["params"]["rest"], "q2");

    // HTTP/2.
    let s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::delete(format!("http://{}/t/acme/questions/q3", gw.proxy))
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(
        body_bytes(h2.send_request(req).await.unwrap()).await,
        "done"
    );
    let data: serde_json::Value = serde_json::from_str(&sub.event().await.data).unwrap();
    assert_eq!(data["method"], "DELETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_rule_does_not_match_publishes_nothing() {
    let up = app(None).await;
    let gw = sidecar(config_with_rules(&up)).await;
    let mut sub = SseClient::open(gw.proxy, "/events?topic=t/acme/questions&topic=items/9").await;
    for (method, path) in [
        ("GET", "/t/acme/questions/q1"),    // not one of the rule's methods
        ("POST", "/t/acme/questions"),      // {rest*} needs a segment
        ("POST", "/t/acme/questions/fail"), // the app said 500
        ("POST", "/u/acme/questions/q1"),   // another path
        ("POST", "/items/9"),               // the items rule takes PUT only
    ] {
        let resp = send(gw.proxy, request(method, path, &[], "{}")).await;
        body_bytes(resp).await;
    }
    // A sentinel published after all of them is the first thing the stream sees.
    publish_ok(
        gw.admin,
        r#"{"topic":"t/acme/questions","data":"sentinel"}"#,
    )
    .await;
    assert_eq!(sub.event().await.data, "sentinel");
    // A rule that asks for the response body gets it.
    body_bytes(send(gw.proxy, request("PUT", "/items/9", &[], "{}")).await).await;
    assert_eq!(sub.event().await.data, "done");
    let metrics =
        body_bytes(send(gw.admin, request("GET", "/metrics", &[], Bytes::new())).await).await;
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        r#"ssegate_derived_events_total{rule="questions",outcome="no_match"} 1"#,
        r#"ssegate_derived_events_total{rule="items",outcome="published"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_comes_from_the_app_never_from_the_client() {
    let up = app(None).await;
    let gw = sidecar(config_with_rules(&up)).await;
    let mut seven = SseClient::open(gw.proxy, "/events?topic=job/7").await;
    let mut chosen = SseClient::open(gw.proxy, "/events?topic=job/999").await;
    // The client sends its own X-Job-Id; the app's answer decides.
    let resp = send(
        gw.proxy,
        request("POST", "/jobs", &[("x-job-id", "999")], "{}"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    body_bytes(resp).await;
    let data: serde_json::Value = serde_json::from_str(&seven.event().await.data).unwrap();
    assert_eq!(data["location"], "/jobs/7");
    assert_eq!(data["status"], 201);
    publish_ok(gw.admin, r#"{"topic":"job/999","data":"sentinel"}"#).await;
    assert_eq!(chosen.event().await.data, "sentinel");
    // A parameter that does not make a valid topic publishes nothing, and is counted.
    body_bytes(send(gw.proxy, request("POST", "/t/a%20b/questions/x", &[], "{}")).await).await;
    eventually("the invalid topic counted", || async {
        let m =
            body_bytes(send(gw.admin, request("GET", "/metrics", &[], Bytes::new())).await).await;
        String::from_utf8_lossy(&m)
            .contains(r#"ssegate_derived_events_total{rule="questions",outcome="invalid_topic"} 1"#)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_follows_the_whole_response() {
    for hyper_path in [false, true] {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let up = app(Some(rx)).await;
        let gw = sidecar(config_with_rules(&up)).await;
        let mut sub = SseClient::open(gw.proxy, "/events?topic=t/acme/questions").await;
        let mut req = request("POST", "/t/acme/questions/slow", &[], "{}");
        if hyper_path {
            *req.body_mut() = chunked("{}");
        }
        let resp = send(gw.proxy, req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        tx.send(Bytes::from_static(b"part one")).await.unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "part one");
        // The response is still open: a sentinel published now comes before any derived
        // event.
        publish_ok(
            gw.admin,
            r#"{"topic":"t/acme/questions","data":"sentinel"}"#,
        )
        .await;
        assert_eq!(
            sub.event().await.data,
            "sentinel",
            "hyper path: {hyper_path}"
        );
        drop(tx);
        while let Some(frame) = body.frame().await {
            frame.unwrap();
        }
        let ev = sub.event().await;
        assert_eq!(
            ev.event.as_deref(),
            Some("questions.changed"),
            "hyper path: {hyper_path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_go_in_events_only_when_asked_and_when_they_fit() {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let up = app(Some(rx)).await;
    let mut config = config_with_rules(&up);
    config.publish.max_event_bytes = 64;
    let gw = sidecar(config).await;
    let mut notes = SseClient::open(gw.proxy, "/events?topic=notes/1&topic=reports").await;
    // The request's JSON body, sent compact.
    let sent = r#"{ "text": "hello" }"#;
    body_bytes(send(gw.proxy, request("POST", "/notes/1", &[], sent)).await).await;
    assert_eq!(notes.event().await.data, r#"{"text":"hello"}"#);
    // Over max_event_bytes: meta, marked.
    let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(100));
    body_bytes(send(gw.proxy, request("POST", "/notes/1", &[], big)).await).await;
    let data: serde_json::Value = serde_json::from_str(&notes.event().await.data).unwrap();
    assert_eq!(
        (data["body_omitted"].clone(), data["status"].clone()),
        (true.into(), 200.into())
    );
    // A chunked response from the app, relayed as it comes: its data, de-chunked.
    let resp = send(gw.proxy, request("POST", "/reports/slow", &[], "{}")).await;
    tx.send(Bytes::from_static(br#"{"rows":"#)).await.unwrap();
    tx.send(Bytes::from_static(b"[1,2]}")).await.unwrap();
    drop(tx);
    assert_eq!(body_bytes(resp).await, r#"{"rows":[1,2]}"#);
    assert_eq!(notes.event().await.data, r#"{"rows":[1,2]}"#);
}

#[test]
fn check_names_the_placeholder_the_path_does_not_define() {
    let text = "upstream: http://127.0.0.1:3000\nderive:\n  - name: q\n    match:\n      path: /t/{tenant}/x\n    publish:\n      topic: t/{tenant}/{id}\n";
    let e = ssegate::config::parse(text, &|_: &str| None).unwrap_err();
    let e = &e.0[0];
    assert_eq!(e.path, "derive[0].publish.topic");
    assert_eq!(e.line, Some(7));
    assert!(
        e.message.contains("{id} is not a parameter of the path"),
        "{e}"
    );
}
