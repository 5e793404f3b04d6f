//! `deploy/grafana/`: every `ssegate_*` metric the dashboard and the alert rules use is one
//! that `/metrics` exposes (a renamed metric would silently empty a panel or an alert).

use crate::support::*;
use bytes::Bytes;
use std::collections::BTreeSet;

/// Every `ssegate_…` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("ssegate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The series names `/metrics` can expose: every sample's name, and the names each
/// `# TYPE` line implies (so that a family with no sample yet still counts).
fn exposed(metrics: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split(' ');
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_and_alerts_use_only_exposed_metrics() {
    let (gw, _up) = sidecar_with(|c| {
        c.tenants.topic = Some(ssegate::config::TenantTopic::parse("tenant/{tenant}/*").unwrap());
    })
    .await;
    let _s = SseClient::open(gw.proxy, "/events?topic=tenant/acme/q").await;
    let body =
        body_bytes(send(gw.admin, request("GET", "/metrics", &[], Bytes::new())).await).await;
    let exposed = exposed(std::str::from_utf8(&body).unwrap());
    assert!(
        exposed.contains("ssegate_tenant_connections"),
        "{exposed:?}"
    );

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana");
    let mut checked = 0;
    for file in ["ssegate-dashboard.json", "alerts.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
        }
        let used = names_in(&text);
        assert!(used.len() >= 5, "{file} uses too few metrics: {used:?}");
        let unknown: Vec<_> = used.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics /metrics does not expose: {unknown:?}"
        );
        checked += used.len();
    }
    assert!(checked > 10);
}
