//! Tenants: the per-tenant cap (and its reload), per-tenant numbers in `/stats` and
//! `/metrics` after a known workload, the bounded `other` series, and the dashboard's page
//! and feed on the internal listener.

use crate::support::*;
use bytes::Bytes;
use hyper::StatusCode;
use ssegate::config::{Config, TenantTopic};
use std::collections::HashMap;
use std::net::SocketAddr;

fn tenants(c: &mut Config, cap: Option<usize>) {
    c.tenants.topic = Some(TenantTopic::parse("tenant/{tenant}/*").unwrap());
    c.limits.max_connections_per_tenant = cap;
}

/// `/stats`'s `tenants`, by name.
async fn tenant_stats(admin: SocketAddr) -> HashMap<String, serde_json::Value> {
    let (_, stats) = call_json(admin, request("GET", "/stats", &[], Bytes::new())).await;
    stats["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["tenant"].as_str().unwrap().to_owned(), t.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_cap_refuses_the_capped_tenant_only_and_a_reload_raises_it() {
    let up = upstream(|_req| async { hyper::Response::new(full("app")) }).await;
    let mut config = test_config(&up.uri);
    tenants(&mut config, Some(2));
    let gw = sidecar(config.clone()).await;
    let mut a1 = SseClient::open(gw.proxy, "/events?topic=tenant/a/x").await;
    let mut a2 = SseClient::open(gw.proxy, "/events?topic=tenant/a/*").await;

    let refused = SseClient::connect(gw.proxy, "/events?topic=tenant/a/y", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused.headers, "retry-after"), Some("5"));
    let (status, body) = call_json(
        gw.proxy,
        request("GET", "/events?topic=tenant/a/z", &[], Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"], "too_many_connections_per_tenant");

    // The other tenant is unaffected, and a stream spanning a and c is refused without
    // keeping a place in c.
    let mut b1 = SseClient::open(gw.proxy, "/events?topic=tenant/b/x").await;
    let _b2 = SseClient::open(gw.proxy, "/events?topic=tenant/b/y").await;
    let spanning =
        SseClient::connect(gw.proxy, "/events?topic=tenant/c/x&topic=tenant/a/x", &[]).await;
    assert_eq!(spanning.status, StatusCode::TOO_MANY_REQUESTS);
    let _c = SseClient::open(gw.proxy, "/events?topic=tenant/c/x").await;
    let _news = SseClient::open(gw.proxy, "/events?topic=news").await;
    let stats = tenant_stats(gw.admin).await;
    assert_eq!(stats["a"]["streams"], 2);
    assert_eq!(stats["b"]["streams"], 2);
    assert_eq!(stats["c"]["streams"], 1);

    let m = metrics(gw.admin).await;
    assert_eq!(
        m["ssegate_connections_rejected_total{reason=\"max_connections_per_tenant\"}"],
        3.0
    );

    // A reload raising the cap admits one more, and drops none of the open streams.
    let mut raised = config.clone();
    raised.limits.max_connections_per_tenant = Some(3);
    assert_eq!(
        gw.running.as_ref().unwrap().reload(raised).unwrap(),
        Vec::<&str>::new()
    );
    let mut a3 = SseClient::open(gw.proxy, "/events?topic=tenant/a/x").await;
    let again = SseClient::connect(gw.proxy, "/events?topic=tenant/a/x", &[]).await;
    assert_eq!(
        again.status,
        StatusCode::TOO_MANY_REQUESTS,
        "3 is the cap now"
    );
    publish_ok(
        gw.admin,
        r#"[{"topic":"tenant/a/x","data":"a"},{"topic":"tenant/b/x","data":"b"}]"#,
    )
    .await;
    for c in [&mut a1, &mut a2, &mut a3] {
        assert_eq!(c.event().await.data, "a");
    }
    assert_eq!(b1.event().await.data, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_count_each_tenant_after_a_known_workload() {
    let (gw, _up) = sidecar_with(|c| tenants(c, None)).await;
    let mut a1 = SseClient::open(gw.proxy, "/events?topic=tenant/a/q").await;
    let mut a2 = SseClient::open(gw.proxy, "/events?topic=tenant/a/*").await;
    let mut b1 = SseClient::open(gw.proxy, "/events?topic=tenant/b/q").await;
    let mut both = SseClient::open(gw.proxy, "/events?topic=tenant/a/q&topic=tenant/b/q").await;
    let mut all = SseClient::open(gw.proxy, "/events?topic=*").await;
    publish_ok(
        gw.admin,
        r#"[{"topic":"tenant/a/q","data":"1"},{"topic":"tenant/a/q","data":"2"},
            {"topic":"tenant/a/r","data":"3"},{"topic":"tenant/b/q","data":"4"},
            {"topic":"news","data":"5"},{"topic":"tenant/c/q","data":"6"}]"#,
    )
    .await;
    assert_eq!(a1.data(2).await, ["1", "2"]);
    assert_eq!(a2.data(3).await, ["1", "2", "3"]);
    assert_eq!(b1.data(1).await, ["4"]);
    assert_eq!(both.data(3).await, ["1", "2", "4"]);
    assert_eq!(all.data(6).await.len(), 6);

    // Deliveries are counted by the dispatchers right after they queue them: wait for the
    // last count to land, then every number is exact. a: 3 events × 3 streams + one more
    // (tenant/a/r to the pattern) + 4 to `*`; b: 2 + 1; c: only `*`.
    eventually("per-tenant deliveries counted", || async {
        let s = tenant_stats(gw.admin).await;
        s["a"]["events_delivered"] == 10
            && s["b"]["events_delivered"] == 3
            && s["c"]["events_delivered"] == 1
    })
    .await;
    let s = tenant_stats(gw.admin).await;
    let row = |t: &str| {
        (
            s[t]["streams"].as_u64().unwrap(),
            s[t]["events_published"].as_u64().unwrap(),
            s[t]["events_delivered"].as_u64().unwrap(),
        )
    };
    assert_eq!(row("a"), (3, 3, 10));
    assert_eq!(row("b"), (2, 1, 3));
    assert_eq!(row("c"), (0, 1, 1));
    assert_eq!(s.len(), 3, "news and * belong to no tenant: {s:?}");
    assert!(s["a"]["oldest_stream_age_seconds"].is_u64());
    assert!(s["c"]["oldest_stream_age_seconds"].is_null());

    let m = metrics(gw.admin).await;
    for (tenant, (streams, published, delivered)) in [("a", (3, 3, 10)), ("b", (2, 1, 3))] {
        let l = format!("{{tenant=\"{tenant}\"}}");
        assert_eq!(m[&format!("ssegate_tenant_connections{l}")], streams as f64);
        assert_eq!(
            m[&format!("ssegate_tenant_events_published_total{l}")],
            published as f64
        );
        assert_eq!(
            m[&format!("ssegate_tenant_events_delivered_total{l}")],
            delivered as f64
        );
    }
    assert!(!m.contains_key("ssegate_tenant_connections{tenant=\"other\"}"));

    drop((a1, a2, both));
    eventually("a's streams closed", || async {
        tenant_stats(gw.admin).await["a"]["streams"] == 0
    })
    .await;
    assert!(tenant_stats(gw.admin).await["a"]["oldest_stream_age_seconds"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_100_tenants_the_rest_are_summed_under_other() {
    let (gw, _up) = sidecar_with(|c| tenants(c, None)).await;
    let mut streams = Vec::new();
    // t000 has two streams, t001..t102 one each: t000..t099 are named, t100..t102 other.
    for i in 0..103 {
        streams.push(SseClient::open(gw.proxy, &format!("/events?topic=tenant/t{i:03}/x")).await);
    }
    streams.push(SseClient::open(gw.proxy, "/events?topic=tenant/t000/y").await);
    let m = metrics(gw.admin).await;
    let series: Vec<_> = m
        .keys()
        .filter(|k| k.starts_with("ssegate_tenant_connections{"))
        .collect();
    assert_eq!(series.len(), 101, "{series:?}");
    assert_eq!(m["ssegate_tenant_connections{tenant=\"t000\"}"], 2.0);
    assert_eq!(m["ssegate_tenant_connections{tenant=\"t099\"}"], 1.0);
    assert_eq!(m["ssegate_tenant_connections{tenant=\"other\"}"], 3.0);
    assert!(!m.contains_key("ssegate_tenant_connections{tenant=\"t100\"}"));
    let published: Vec<_> = m
        .keys()
        .filter(|k| k.starts_with("ssegate_tenant_events_published_total{"))
        .collect();
    assert_eq!(published.len(), 101);
    // /stats has them all.
    assert_eq!(tenant_stats(gw.admin).await.len(), 103);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_is_self_contained_and_its_feed_moves() {
    let (gw, _up) = sidecar_with(|c| tenants(c, None)).await;
    let resp = send(gw.admin, request("GET", "/dashboard", &[], Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(resp.headers(), "content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    assert!(page.contains("dashboard/events"));
    for external in ["http://", "https://", "<link", "src=\""] {
        assert!(
            !page.contains(external),
            "the page loads nothing: {external}"
        );
    }

    let mut feed = SseClient::open(gw.admin, "/dashboard/events").await;
    let first = feed.event().await;
    assert_eq!(first.event.as_deref(), Some("snapshot"));
    let snap: serde_json::Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snap["connections"], 0);
    assert_eq!(snap["broker"]["up"], true);

    let mut sub = SseClient::open(gw.proxy, "/events?topic=tenant/acme/q").await;
    publish_ok(gw.admin, r#"{"topic":"tenant/acme/q","data":"hi"}"#).await;
    assert_eq!(sub.event().await.data, "hi");
    // Each second's snapshot follows; one of the next few shows it.
    for n in 0.. {
        assert!(n < 5, "no snapshot showed the stream and the event");
        let ev = feed.event().await;
        let s: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        if s["totals"]["published"] == 1 && s["connections"] == 1 {
            assert_eq!(s["tenants"][0]["tenant"], "acme");
            assert_eq!(s["tenants"][0]["streams"], 1);
            assert_eq!(s["topics"][0]["topic"], "tenant/acme/q");
            assert!(
                s["series"]["connections"]
                    .as_array()
                    .unwrap()
                    .contains(&1.into())
            );
            break;
        }
    }
    let resp = send(gw.admin, request("POST", "/dashboard", &[], Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    // A viewer does not hold up a shutdown: its stream ends.
    // (A snapshot already on its way may still arrive first.)
    gw.running.as_ref().unwrap().shutdown();
    let mut late = 0;
    while let Some(ev) = feed.next().await {
        assert_eq!(ev.event.as_deref(), Some("snapshot"));
        late += 1;
        assert!(late < 2, "the feed goes on after the shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_feed_shows_an_unreachable_redis_as_down() {
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (gw, _up) = sidecar_with(|c| {
        c.broker.kind = ssegate::config::BrokerKind::Redis;
        c.broker.redis.url = format!("redis://{closed}");
    })
    .await;
    let mut feed = SseClient::open(gw.admin, "/dashboard/events").await;
    let s: serde_json::Value = serde_json::from_str(&feed.event().await.data).unwrap();
    assert_eq!(s["broker"]["kind"], "redis");
    assert_eq!(s["broker"]["up"], false);
    let resp = send(gw.admin, request("GET", "/dashboard", &[], Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
}
