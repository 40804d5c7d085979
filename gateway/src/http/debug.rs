//! `GET /debug` (and under `root_path`): what an operator needs to see why the gateway is
//! slow or refusing: admission (in flight and queued), pending requests, queue depth,
//! memory, cache, every model with its workers, every worker.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::models::debug_list;

/// `GET /debug`.
#[utoipa::path(
    get,
    path = "/debug",
    tag = "Operations",
    summary = "The gateway's state for operators",
    responses((
        status = 200,
        description = "`gateway_id`, `model`, `uptime_s`, `active_requests`, `admission_limit`, \
            `queued_requests`, `queue_limit`, `pending_upstream`, `upstream_resends`, `api_keys` \
            (their count), `queue_depth`, `process.rss_bytes`, `cache` (`enabled`, `entries`, \
            `capacity`, `hits`, `misses`), `discovery` (`taken_ms`, `error`), `models` (every served \
            model: `model` (its name), `task`, `route` (null for the defaults), `hidden_size`, \
            `serving_workers` and `workers`, the worker ids by kind) and `workers` (each \
            worker's status as it answered discovery; see docs/protocol.md)",
        body = Object
    ))
)]
pub async fn debug(State(state): State<AppState>) -> Json<Value> {
    let snapshot = state.discovery.workers().await;
    let catalog = state.models.catalog_of(&snapshot);
    let service = &state.service;
    let cache = &service.cache;
    Json(json!({
        "gateway_id": service.upstream.gateway_id(),
        "model": state.config.model,
        "uptime_s": common::wire::now_ms().saturating_sub(state.started_s * 1000) / 1000,
        "active_requests": service.admission.active(),
        "admission_limit": service.admission.limit(),
        "queued_requests": service.admission.queued(),
        "queue_limit": service.admission.queue_limit(),
        "pending_upstream": service.upstream.pending(),
        "upstream_resends": service.upstream.resends(),
        "api_keys": state.api_keys.len(),
        "queue_depth": snapshot.queue_depth(),
        "process": { "rss_bytes": rss_bytes().await },
        "cache": {
            "enabled": cache.is_enabled(),
            "entries": cache.len(),
            "capacity": cache.capacity(),
            "hits": cache.hits(),
            "misses": cache.misses(),
        },
        "discovery": {
            "taken_ms": snapshot.taken_ms,
            "error": snapshot.error,
        },
        "models": debug_list(&catalog),
        "workers": snapshot.workers.as_slice(),
    }))
}

/// Resident memory of this process from `/proc/self/status` (`None` off Linux).
async fn rss_bytes() -> Option<u64> {
    let status = tokio::fs::read_to_string("/proc/self/status").await.ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}
