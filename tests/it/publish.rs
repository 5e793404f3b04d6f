//! The publish webhook on the internal listener.

use crate::support::*;
use bytes::Bytes;
use hyper::StatusCode;
use std::time::Duration;

async fn history_len(admin: std::net::SocketAddr) -> u64 {
    let (_, json) = call_json(admin, request("GET", "/stats", &[], Bytes::new())).await;
    json["history"]["events"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_batch_publishes_return_ids_in_order() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let ids = publish_ok(gw.admin, r#"{"topic":"a","data":"x"}"#).await;
    assert_eq!(ids.len(), 1);
    let batch = publish_ok(
        gw.admin,
        r#"[{"topic":"a","data":"1"},{"topics":["a","b"],"data":"2"}]"#,
    )
    .await;
    assert_eq!(batch.len(), 2);
    let parse = |s: &str| s.parse::<ssegate::sse::EventId>().unwrap();
    assert!(parse(&ids[0]) < parse(&batch[0]) && parse(&batch[0]) < parse(&batch[1]));
    assert_eq!(history_len(gw.admin).await, 3);
    // charset parameter accepted.
    let (status, _) = call_json(
        gw.admin,
        request(
            "POST",
            "/publish",
            &[("content-type", "application/json; charset=utf-8")],
            r#"{"topic":"a","data":"x"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_item_publishes_nothing() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let mut c = SseClient::open(gw.proxy, "/events?topic=a").await;
    let (status, json) = publish(
        gw.admin,
        r#"[{"topic":"a","data":"1"},{"topic":"a","data":"2"},{"topic":"a b","data":"3"}]"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"], "invalid_event");
    let detail = json["detail"].as_str().unwrap();
    assert!(
        detail.contains("item 2") && detail.contains("topic"),
        "{detail}"
    );
    assert_eq!(history_len(gw.admin).await, 0);
    publish_ok(gw.admin, r#"{"topic":"a","data":"after"}"#).await;
    assert_eq!(
        c.event().await.data,
        "after",
        "nothing of the bad batch was delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_comes_as_json() {
    let (gw, _up) = sidecar_with(|c| {
        c.publish.token = Some("s3cret".to_owned());
        c.publish.max_body = 2048;
        c.publish.max_event_bytes = 100;
    })
    .await;
    let auth = ("authorization", "Bearer s3cret");
    let json_ct = ("content-type", "application/json");
    type Case<'a> = (Vec<(&'a str, &'a str)>, String, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![json_ct],
            r#"{"topic":"a","data":"x"}"#.into(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            vec![json_ct, ("authorization", "Bearer wrong")],
            r#"{"topic":"a","data":"x"}"#.into(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            vec![auth],
            r#"{"topic":"a","data":"x"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            vec![auth, ("content-type", "text/plain")],
            r#"{"topic":"a","data":"x"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            vec![auth, json_ct],
            "{\n\"topic\": \"a\",\n\"data\": }".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            vec![auth, json_ct],
            r#"{"topic":"a"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            vec![auth, json_ct],
            r#"{"topic":"a","data":"x","event":"ssegate.gap"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            vec![auth, json_ct],
            format!(r#"{{"topic":"a","data":"{}"}}"#, "x".repeat(101)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            vec![auth, json_ct],
            format!(r#"{{"topic":"a","data":"{}"}}"#, "x".repeat(3000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
    ];
    for (headers, body, status, code) in cases {
        let (got, json) = call_json(
            gw.admin,
            request("POST", "/publish", &headers, body.clone()),
        )
        .await;
        assert_eq!(got, status, "{body}: {json}");
        assert_eq!(json["error"], code, "{body}");
        assert!(
            json["detail"].as_str().is_some_and(|d| d.len() > 10),
            "{json}"
        );
        if code == "invalid_json" {
            assert!(
                json["detail"].as_str().unwrap().contains("line 3"),
                "{json}"
            );
        }
    }
    assert_eq!(history_len(gw.admin).await, 0);
    let (got, _) = call_json(
        gw.admin,
        request(
            "POST",
            "/publish",
            &[auth, json_ct],
            r#"{"topic":"a","data":"x"}"#,
        ),
    )
    .await;
    assert_eq!(got, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_over_a_hundred_header_fields_is_refused_and_stores_nothing() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let mut c = SseClient::open(gw.proxy, "/events?topic=a").await;
    let names: Vec<String> = (0..100).map(|i| format!("x-f{i}")).collect();
    let mut fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    fields.push(("content-type", "application/json"));
    let post = |fields: &[(&str, &str)], data: &str| {
        let body = format!(r#"{{"topic":"a","data":"{data}"}}"#);
        request("POST", "/publish", fields, body)
    };
    let resp = send(gw.admin, post(&fields, "refused")).await;
    // hyper's parser refuses it on this listener, before ssegate reads it: a bare 431
    // (`Handler::OWN_FIELD_REFUSALS`; reading more fields costs every publish).
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(body_bytes(resp).await, Bytes::new());
    // 97 of them, the content type, `host` and `content-length` make 100: within the limit.
    fields.drain(..3);
    let (status, _) = call_json(gw.admin, post(&fields, "after")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        c.event().await.data,
        "after",
        "the refused publish was delivered"
    );
    assert_eq!(history_len(gw.admin).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_without_content_length_is_refused() {
    let (gw, _up) = sidecar_with(|c| c.publish.max_body = 1024).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/publish")
        .header("content-type", "application/json")
        .body(http_body_util::BodyExt::boxed(ChannelBody(rx)))
        .unwrap();
    tokio::spawn(async move {
        for _ in 0..10 {
            if tx.send(Bytes::from(vec![b' '; 512])).await.is_err() {
                return;
            }
        }
    });
    let resp = tokio::time::timeout(Duration::from_secs(10), send(gw.admin, req))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(history_len(gw.admin).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_paths_are_refused() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let (status, json) = call_json(gw.admin, request("GET", "/publish", &[], Bytes::new())).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(json["error"], "method_not_allowed");
    let (status, json) = call_json(gw.admin, request("GET", "/nope", &[], Bytes::new())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json["error"], "not_found");
    let (status, _) = call_json(gw.admin, request("GET", "/healthz", &[], Bytes::new())).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call_json(gw.admin, request("GET", "/readyz", &[], Bytes::new())).await;
    assert_eq!(status, StatusCode::OK);
}
