//! Which model serves a request: the registry of served models and the rule that picks one.
//!
//! Each task (embeddings, reranking) has a default model, the configured `model` and
//! `rerank_model`, always on the deployment's own subjects (route `None`) and served even
//! before any worker answers. Every further model is discovered: workers started with
//! `[nats] model_subjects` report their model's name and route in their status answers, and a
//! [`Catalog`] built from a discovery snapshot lists each such (task, name) with its route and
//! workers. No restart is needed to add one.
//!
//! A request's `model` picks the model ([`Catalog::find`]): absent, the task's default;
//! present, the first model of the task it names ([`names_model`]: the full name, or the name
//! without its organisation), full-name matches first. A name that matches nothing makes
//! [`Models::resolve`] refresh discovery once (at most once per [`MISS_REFRESH_INTERVAL`]
//! across requests) and look again, so a model whose workers just started is served at once;
//! still nothing answers 404 `model_not_found` naming the task's models.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::subjects::Task;
use common::wire::{WorkerKind, WorkerStatus};
use tokio::time::Instant;

use crate::http::error::ApiError;
use crate::upstream::discovery::{Discovery, Snapshot};

/// Least time between two discoveries run because a request named an unknown model.
pub const MISS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a worker that answered a discovery still counts for routing and the model
/// listings after it stops answering: a busy worker may miss one scatter-gather's window
/// (`status_wait_ms`), and its model must not flicker to 404 because of that. A model whose
/// workers are all gone answers 503 `no_workers` for this long, then 404. `/health` and the
/// worker gauges take no grace: they count what the latest discovery heard.
pub const WORKER_GRACE: Duration = Duration::from_secs(30);

/// The configured default model of each task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// The default embedding model (`[gateway] model`).
    pub embed: String,
    /// The default reranker (`[gateway] rerank_model`).
    pub rerank: String,
}

impl Defaults {
    /// The defaults `config` names (`model`, `rerank_model`).
    pub fn of_config(config: &crate::config::GatewayConfig) -> Self {
        Self {
            embed: config.model.clone(),
            rerank: config.rerank_model.clone(),
        }
    }

    /// The default model's name of `task`.
    pub fn of(&self, task: Task) -> &str {
        match task {
            Task::Embed => &self.embed,
            Task::Rerank => &self.rerank,
        }
    }
}

/// One model the gateway serves, with the workers that answered discovery for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedModel {
    /// What it does.
    pub task: Task,
    /// Its name, as answers echo it: the configured name for a default, the workers'
    /// reported name for a discovered model.
    pub name: String,
    /// Its route token (`{prefix}.models.{route}`); `None` for a task's default.
    pub route: Option<String>,
    /// The workers that answered for it (loaded or not), in discovery order.
    pub workers: Vec<WorkerStatus>,
    /// Width of its vectors: the smallest hidden size its serving GPU workers report
    /// (embedding models; `None` before one answers).
    pub hidden_size: Option<u32>,
}

impl ServedModel {
    /// A model with no worker yet.
    fn new(task: Task, name: &str, route: Option<String>) -> Self {
        Self {
            task,
            name: name.to_string(),
            route,
            workers: Vec::new(),
            hidden_size: None,
        }
    }

    /// Its workers of `kind` that serve (loaded and not unhealthy).
    pub fn serving_of(&self, kind: WorkerKind) -> impl Iterator<Item = &WorkerStatus> {
        self.workers
            .iter()
            .filter(move |w| w.kind == kind && w.serving())
    }

    /// How many of its workers (of every kind) serve.
    pub fn serving(&self) -> usize {
        self.workers.iter().filter(|w| w.serving()).count()
    }

    /// Whether it is a task's default (on the deployment's own subjects).
    pub fn is_default(&self) -> bool {
        self.route.is_none()
    }
}

/// The task of a worker's stage.
fn task_of(kind: WorkerKind) -> Task {
    match kind {
        WorkerKind::Tokenizer | WorkerKind::Gpu => Task::Embed,
        WorkerKind::RerankTokenizer | WorkerKind::RerankGpu => Task::Rerank,
    }
}

/// Whether a client's `model` names `served`: the full name, or the name without its
/// organisation (`Qwen3-Embedding-0.6B` for `Qwen/Qwen3-Embedding-0.6B`).
pub fn names_model(requested: &str, served: &str) -> bool {
    requested == served
        || served
            .rsplit_once('/')
            .is_some_and(|(_, name)| name == requested)
}

/// Every model served at one discovery: the default embedding model, the default reranker,
/// then each discovered routed model, by task (embeddings first) and name.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// The models in listing order; the two defaults first.
    models: Vec<Arc<ServedModel>>,
}

impl Catalog {
    /// The catalog of `workers` (one discovery's answers) under `defaults`: workers without a
    /// route belong to their task's default whatever name they report; routed workers are
    /// grouped by task and reported name.
    pub fn new(defaults: &Defaults, workers: &[WorkerStatus]) -> Self {
        let mut defaults = [Task::Embed, Task::Rerank].map(|task| {
            let name = defaults.of(task);
            ServedModel::new(task, name, None)
        });
        let mut routed: Vec<ServedModel> = Vec::new();
        for worker in workers {
            let task = task_of(worker.kind);
            let model = match &worker.route {
                None => &mut defaults[usize::from(task == Task::Rerank)],
                Some(route) => {
                    let known = routed
                        .iter()
                        .position(|m| m.task == task && m.name == worker.model);
                    match known {
                        Some(index) => &mut routed[index],
                        None => {
                            routed.push(ServedModel::new(task, &worker.model, Some(route.clone())));
                            routed.last_mut().expect("pushed just above; this is a bug")
                        }
                    }
                }
            };
            model.workers.push(worker.clone());
        }
        routed.sort_by(|a, b| (a.task as u8, &a.name).cmp(&(b.task as u8, &b.name)));
        let models = defaults
            .into_iter()
            .chain(routed)
            .map(|mut model| {
                model.hidden_size = model
                    .serving_of(WorkerKind::Gpu)
                    .filter_map(|w| w.hidden_size)
                    .min();
                Arc::new(model)
            })
            .collect();
        Self { models }
    }

    /// Every model, defaults first.
    pub fn models(&self) -> &[Arc<ServedModel>] {
        &self.models
    }

    /// The default model of `task`.
    pub fn default_of(&self, task: Task) -> &Arc<ServedModel> {
        self.models
            .iter()
            .find(|m| m.task == task && m.is_default())
            .expect("a catalog always holds both defaults; this is a bug")
    }

    /// The model of `task` that `requested` names: the default when `None`; else the first
    /// model whose full name it is, or failing that the first whose name without its
    /// organisation it is (defaults first, then by name).
    pub fn find(&self, task: Task, requested: Option<&str>) -> Option<&Arc<ServedModel>> {
        let Some(requested) = requested else {
            return Some(self.default_of(task));
        };
        let of_task = || self.models.iter().filter(move |m| m.task == task);
        of_task()
            .find(|m| m.name == requested)
            .or_else(|| of_task().find(|m| names_model(requested, &m.name)))
    }

    /// The names of `task`'s models, the default first, then the discovered ones by name.
    pub fn names(&self, task: Task) -> Vec<String> {
        self.models
            .iter()
            .filter(|m| m.task == task)
            .map(|m| m.name.clone())
            .collect()
    }
}

/// The catalog of the latest discovery, kept with the moment of that discovery.
struct Latest {
    /// When the snapshot behind `catalog` was taken; `None` before any discovery.
    taken: Option<Instant>,
    /// The catalog built from it.
    catalog: Arc<Catalog>,
}

/// Resolves the `model` of requests against the latest discovery; one per gateway.
pub struct Models {
    /// The configured defaults.
    defaults: Defaults,
    /// Where the workers are found.
    discovery: Arc<Discovery>,
    /// The catalog of the latest successful discovery, rebuilt when a newer one arrives.
    latest: Mutex<Latest>,
    /// When a request's unknown model last made discovery run; the lock also makes the
    /// requests missing at the same time wait for that one discovery.
    last_miss_refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Every worker heard within [`WORKER_GRACE`], by id: when it last answered and what.
    seen: Mutex<HashMap<String, (Instant, WorkerStatus)>>,
}

impl Models {
    /// The models of `defaults` and of whatever `discovery` finds.
    pub fn new(defaults: Defaults, discovery: Arc<Discovery>) -> Self {
        let catalog = Arc::new(Catalog::new(&defaults, &[]));
        Self {
            defaults,
            discovery,
            latest: Mutex::new(Latest {
                taken: None,
                catalog,
            }),
            last_miss_refresh: tokio::sync::Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The catalog of `snapshot` (a discovery just run, for listings), with the workers
    /// that answered an earlier one within [`WORKER_GRACE`] of it but not this one.
    pub fn catalog_of(&self, snapshot: &Snapshot) -> Catalog {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for worker in snapshot.workers.iter() {
            let heard = seen
                .entry(worker.worker_id.clone())
                .or_insert_with(|| (snapshot.taken, worker.clone()));
            if heard.0 <= snapshot.taken {
                *heard = (snapshot.taken, worker.clone());
            }
        }
        seen.retain(|_, (heard, _)| {
            snapshot.taken.saturating_duration_since(*heard) < WORKER_GRACE
        });
        let mut workers = snapshot.workers.to_vec();
        workers.extend(
            seen.values()
                .filter(|(_, w)| !snapshot.workers.iter().any(|s| s.worker_id == w.worker_id))
                .map(|(_, w)| w.clone()),
        );
        Catalog::new(&self.defaults, &workers)
    }

    /// The catalog of the latest successful discovery, without waiting for one.
    pub fn current(&self) -> Arc<Catalog> {
        let snapshot = self.discovery.latest_good();
        let mut latest = self.lock();
        let taken = snapshot.as_ref().map(|s| s.taken);
        if let Some(snapshot) = snapshot
            && latest.taken != taken
        {
            latest.catalog = Arc::new(self.catalog_of(&snapshot));
            latest.taken = taken;
        }
        latest.catalog.clone()
    }

    /// The model of `task` that `requested` names (the default when `None`). A name no
    /// model answers to makes discovery run again (unless a miss made it run less than
    /// [`MISS_REFRESH_INTERVAL`] ago) before the 404 `model_not_found` naming `task`'s models.
    pub async fn resolve(
        &self,
        task: Task,
        requested: Option<&str>,
    ) -> Result<Arc<ServedModel>, ApiError> {
        if let Some(model) = self.current().find(task, requested) {
            return Ok(model.clone());
        }
        {
            let mut last = self.last_miss_refresh.lock().await;
            if last.is_none_or(|at| at.elapsed() >= MISS_REFRESH_INTERVAL) {
                *last = Some(Instant::now());
                self.discovery.refresh().await;
            }
        }
        let catalog = self.current();
        match catalog.find(task, requested) {
            Some(model) => Ok(model.clone()),
            None => Err(ApiError::ModelNotFound {
                requested: requested.unwrap_or_default().to_string(),
                task,
                served: catalog.names(task),
            }),
        }
    }

    /// Locks the latest catalog; a panic while it was held cannot leave it inconsistent
    /// (it is replaced whole), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Latest> {
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            embed: "Qwen/Qwen3-Embedding-0.6B".into(),
            rerank: "Qwen/Qwen3-Reranker-0.6B".into(),
        }
    }

    /// A loaded worker's status, as it answers discovery (the optional fields absent).
    fn worker(kind: WorkerKind, id: &str, model: &str, routed: bool) -> WorkerStatus {
        let status = serde_json::json!({
            "worker_id": id, "kind": kind, "model": model, "loaded": true,
            "hidden_size": (kind == WorkerKind::Gpu).then_some(if routed { 16 } else { 8 }),
            "batches": 0, "sequences": 0, "tokens": 0, "in_flight": 0, "started_ms": 0,
            "route": routed.then(|| common::subjects::model_token(model)),
        });
        serde_json::from_value(status).expect("a valid worker status")
    }

    fn catalog() -> Catalog {
        Catalog::new(
            &defaults(),
            &[
                worker(
                    WorkerKind::Tokenizer,
                    "t0",
                    "whatever-the-default-says",
                    false,
                ),
                worker(WorkerKind::Gpu, "g0", "Qwen/Qwen3-Embedding-0.6B", false),
                worker(WorkerKind::Tokenizer, "t1", "Qwen/Qwen3-Embedding-4B", true),
                worker(WorkerKind::Gpu, "g1", "Qwen/Qwen3-Embedding-4B", true),
                worker(WorkerKind::Tokenizer, "t2", "acme/Qwen3-Embedding-4B", true),
                worker(WorkerKind::RerankTokenizer, "r1", "acme/reranker", true),
                worker(WorkerKind::Tokenizer, "t3", "acme/alpha", true),
            ],
        )
    }

    fn route_of(catalog: &Catalog, task: Task, requested: Option<&str>) -> Option<String> {
        catalog
            .find(task, requested)
            .map(|m| m.route.clone().unwrap_or_else(|| "default".into()))
    }

    #[test]
    fn model_names_match_with_or_without_organisation() {
        let served = "Qwen/Qwen3-Embedding-0.6B";
        assert!(names_model(served, served));
        assert!(names_model("Qwen3-Embedding-0.6B", served));
        assert!(!names_model("text-embedding-3-small", served));
        assert!(!names_model("Qwen", served));
        assert!(names_model("plain", "plain"));
    }

    #[test]
    fn an_absent_or_default_name_picks_the_default_of_the_task() {
        let catalog = catalog();
        let default = |task, requested| route_of(&catalog, task, requested);
        assert_eq!(default(Task::Embed, None).as_deref(), Some("default"));
        assert_eq!(
            default(Task::Embed, Some("Qwen3-Embedding-0.6B")).as_deref(),
            Some("default")
        );
        assert_eq!(default(Task::Rerank, None).as_deref(), Some("default"));
        // Another task's default is not this task's model.
        assert_eq!(default(Task::Embed, Some("Qwen/Qwen3-Reranker-0.6B")), None);
        let model = catalog.find(Task::Embed, None).unwrap();
        assert_eq!(model.name, "Qwen/Qwen3-Embedding-0.6B");
        assert_eq!(
            model.workers.len(),
            2,
            "unrouted workers belong to the default"
        );
        assert_eq!(model.hidden_size, Some(8));
    }

    #[test]
    fn a_discovered_name_picks_its_route_full_names_first() {
        let catalog = catalog();
        let route = |task, requested| route_of(&catalog, task, Some(requested));
        assert_eq!(
            route(Task::Embed, "Qwen/Qwen3-Embedding-4B").as_deref(),
            Some("qwen-qwen3-embedding-4b")
        );
        assert_eq!(
            route(Task::Embed, "acme/Qwen3-Embedding-4B").as_deref(),
            Some("acme-qwen3-embedding-4b")
        );
        // The short name two models share picks the first by name.
        assert_eq!(
            route(Task::Embed, "Qwen3-Embedding-4B").as_deref(),
            Some("qwen-qwen3-embedding-4b")
        );
        assert_eq!(
            route(Task::Rerank, "reranker").as_deref(),
            Some("acme-reranker")
        );
        assert_eq!(route(Task::Embed, "reranker"), None);
        assert_eq!(route(Task::Embed, "qwen-qwen3-embedding-4b"), None);
        let model = catalog
            .find(Task::Embed, Some("Qwen/Qwen3-Embedding-4B"))
            .unwrap();
        assert_eq!(model.hidden_size, Some(16));
        assert_eq!(model.serving(), 2);
    }

    #[test]
    fn names_list_the_default_first_then_the_discovered_by_name() {
        let catalog = catalog();
        assert_eq!(
            catalog.names(Task::Embed),
            [
                "Qwen/Qwen3-Embedding-0.6B",
                "Qwen/Qwen3-Embedding-4B",
                "acme/Qwen3-Embedding-4B",
                "acme/alpha"
            ]
        );
        assert_eq!(
            catalog.names(Task::Rerank),
            ["Qwen/Qwen3-Reranker-0.6B", "acme/reranker"]
        );
        let order: Vec<&str> = catalog.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            order,
            [
                "Qwen/Qwen3-Embedding-0.6B",
                "Qwen/Qwen3-Reranker-0.6B",
                "Qwen/Qwen3-Embedding-4B",
                "acme/Qwen3-Embedding-4B",
                "acme/alpha",
                "acme/reranker"
            ]
        );
    }

    #[test]
    fn without_workers_only_the_defaults_are_served() {
        let catalog = Catalog::new(&defaults(), &[]);
        assert_eq!(catalog.models().len(), 2);
        assert!(catalog.models().iter().all(|m| m.workers.is_empty()));
        assert_eq!(catalog.find(Task::Embed, Some("acme/alpha")), None);
        assert_eq!(catalog.default_of(Task::Embed).hidden_size, None);
    }
}
