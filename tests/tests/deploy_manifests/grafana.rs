//! The Grafana dashboards (deploy/grafana) query only the gateway's metrics, by labels those
//! metrics have.

use std::collections::{BTreeMap, BTreeSet};

use e2e_tests::repo_root;

use super::{files_under, gateway_metrics};

/// Every `expr` in a Grafana dashboard.
fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "expr" || (k == "query" && v.as_str().is_some_and(|q| q.contains('('))) {
                    out.push(v.as_str().unwrap().to_string());
                } else {
                    exprs(v, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The `embed_*` metric names in a PromQL expression, histogram suffixes removed.
fn metric_names(expr: &str, metrics: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("embed_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| metrics.contains_key(*b)))
            .unwrap_or(name);
        names.push(base.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn grafana_dashboard_uses_the_gateway_metrics() {
    let metrics = gateway_metrics();
    let dashboards = files_under(&repo_root().join("deploy/grafana"), &|p| {
        p.extension().is_some_and(|e| e == "json")
    });
    assert!(!dashboards.is_empty(), "no dashboard in deploy/grafana");
    let mut used = BTreeSet::new();
    for path in dashboards {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut all = Vec::new();
        exprs(&json, &mut all);
        assert!(!all.is_empty(), "{}: no queries", path.display());
        for expr in all {
            let names = metric_names(&expr, &metrics);
            assert!(!names.is_empty(), "{expr}: no embed_* metric");
            let mut labels = BTreeSet::from(["le", "job", "instance"].map(String::from));
            for name in &names {
                let own = metrics
                    .get(name)
                    .unwrap_or_else(|| panic!("{expr}: {name} is not in gateway/src/metrics.rs"));
                labels.extend(own.iter().cloned());
            }
            // Labels grouped by or matched on must exist on the metrics queried.
            for piece in expr.split("by (").skip(1) {
                for label in piece[..piece.find(')').unwrap()].split(',') {
                    assert!(labels.contains(label.trim()), "{expr}: no label {label}");
                }
            }
            for piece in expr.split('{').skip(1) {
                for matcher in piece[..piece.find('}').unwrap()].split(',') {
                    let label = matcher.split(['=', '!']).next().unwrap().trim();
                    assert!(labels.contains(label), "{expr}: no label {label}");
                }
            }
            used.extend(names);
        }
    }
    for required in [
        "embed_http_requests_total",
        "embed_http_request_duration_seconds",
        "embed_tokens_total",
        "embed_queue_depth",
        "embed_workers",
        "embed_cache_hits_total",
        "embed_cache_misses_total",
        "embed_http_requests_in_flight",
        "embed_http_requests_rejected_total",
    ] {
        assert!(
            used.contains(required),
            "the dashboard does not show {required}"
        );
    }
}

#[test]
fn metric_name_extraction_rejects_unknown_names() {
    let metrics = gateway_metrics();
    let names = metric_names(
        "rate(embed_http_request_duration_seconds_bucket[5m]) + embed_nope_total",
        &metrics,
    );
    assert_eq!(
        names,
        ["embed_http_request_duration_seconds", "embed_nope_total"]
    );
    assert!(!metrics.contains_key("embed_nope_total"));
}
