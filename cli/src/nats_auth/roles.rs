//! Who may do what on the bus: one [`Role`] per kind of process, each with the subjects it
//! may publish on and subscribe to, read off what the code does (see the Security section
//! of docs/operations.md for the table).
//!
//! A role's name is also its identity (`[nats] identity`): its inbox is `_INBOX.{name}`, so
//! its replies (request/reply answers, JetStream API answers) arrive under
//! `_INBOX.{name}.>`, which no other role may read. Requesters publish on
//! `{requests}.from.{name}` and nowhere else on the request subjects.
//!
//! No role uses `allow_responses`: the workers answer requesters from messages other than
//! the request (a GPU worker from a queued batch, a tokenizer worker in bundles and after a
//! failed queueing), so every worker may publish under `_INBOX.>`; requesters cannot.
//!
//! Models served on subjects of their own ([`RoutedModels`], `[nats] model_subjects`) share
//! the roles of their task: the `tokenizer` role may use the default model's subjects and
//! every routed embedding model's (`{prefix}.models.{token}.…`), each named exactly, and so
//! on. A role's seed is then one per task, not one per model: the pools of one task are
//! equally trusted, and a deployment adds a model without new seeds to hand out.

use common::queue::lane_consumer_name;
use common::subjects::{INBOX_ROOT, Subjects, Task, model_token};
use common::wire::Priority;

/// The gateway's role.
pub const GATEWAY: &str = "gateway";
/// The embedding tokenizer workers' role.
pub const TOKENIZER: &str = "tokenizer";
/// The embedding GPU workers' role.
pub const GPU: &str = "gpu";
/// The rerank tokenizer workers' role.
pub const RERANK_TOKENIZER: &str = "rerank-tokenizer";
/// The rerank GPU workers' role.
pub const RERANK_GPU: &str = "rerank-gpu";
/// The operator's role: JetStream administration, status and service discovery.
pub const OPERATOR: &str = "operator";

/// The roles of the deployment's own processes (not the external clients).
pub const SERVICE_ROLES: [&str; 6] = [
    GATEWAY,
    TOKENIZER,
    GPU,
    RERANK_TOKENIZER,
    RERANK_GPU,
    OPERATOR,
];

/// The models a deployment serves beyond its default embedding model and reranker, each
/// on its own route (workers with `[nats] model_subjects`), by the name its workers report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutedModels {
    /// Further embedding models (`nats-auth --model NAME`).
    pub embed: Vec<String>,
    /// Further rerankers (`nats-auth --rerank-model NAME`).
    pub rerank: Vec<String>,
}

impl RoutedModels {
    /// The subjects of every model of `task` under `prefix`: the default model's first,
    /// then each routed model's once (two names with one token share their subjects).
    pub fn subjects(&self, prefix: &str, task: Task) -> Vec<Subjects> {
        let default = Subjects::new(prefix);
        let names = match task {
            Task::Embed => &self.embed,
            Task::Rerank => &self.rerank,
        };
        let mut all = vec![default.clone()];
        for name in names {
            let routed = default.routed(Some(&model_token(name)));
            if !all.contains(&routed) {
                all.push(routed);
            }
        }
        all
    }

    /// Every model name, each with the flag that names it (`--model`, `--rerank-model`).
    pub fn named(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let embed = self.embed.iter().map(|name| ("--model", name.as_str()));
        let rerank = self
            .rerank
            .iter()
            .map(|name| ("--rerank-model", name.as_str()));
        embed.chain(rerank)
    }
}

/// One identity and its subject permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The role's name, which is also its identity.
    pub name: String,
    /// Subjects it may publish on (NATS wildcards allowed).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to (NATS wildcards allowed).
    pub subscribe: Vec<String>,
}

/// The micro-service name (`$SRV` discovery) a worker of `task` registers under.
fn service_name(worker: &str, task: Task) -> &'static str {
    match (worker, task) {
        (TOKENIZER, Task::Embed) => "qwen3-embed-tokenizer",
        (TOKENIZER, Task::Rerank) => "qwen3-embed-rerank-tokenizer",
        (_, Task::Embed) => "qwen3-embed-gpu",
        (_, Task::Rerank) => "qwen3-embed-rerank-gpu",
    }
}

/// The inbox subscription of identity `name`: `_INBOX.{name}.>`.
fn own_inbox(name: &str) -> String {
    format!("{INBOX_ROOT}.{name}.>")
}

/// Every reply inbox (workers answer requesters of every identity).
fn all_inboxes() -> String {
    format!("{INBOX_ROOT}.>")
}

/// What answering `$SRV.PING|INFO|STATS` discovery requests for `service` needs.
fn service_discovery(service: &str) -> [String; 3] {
    [
        "$SRV.*".to_string(),
        format!("$SRV.*.{service}"),
        format!("$SRV.*.{service}.*"),
    ]
}

/// The JetStream API subjects that create (or find, or update) stream `stream`.
fn stream_setup(stream: &str) -> [String; 3] {
    [
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.CREATE.{stream}"),
        format!("$JS.API.STREAM.UPDATE.{stream}"),
    ]
}

/// A tokenizer worker of `task` named `name`, serving the models of `models` (each one's
/// subjects): takes requests (bare, and from every identity), creates the streams, queues
/// batches, offers them directly, answers requesters and status requests.
fn tokenizer(models: &[Subjects], task: Task, name: &str) -> Role {
    let mut publish = vec![all_inboxes()];
    let mut subscribe = Vec::new();
    for subjects in models {
        publish.extend([
            subjects.batches_for(task),
            subjects.lane_batches(task, Priority::Bulk),
            subjects.direct_batches_for(task),
        ]);
        publish.extend(stream_setup(&subjects.batch_stream_for(task)));
        publish.extend(stream_setup(&subjects.lane_stream(task, Priority::Bulk)));
        let requests = subjects.requests_for(task);
        subscribe.extend([requests.clone(), format!("{requests}.from.*")]);
        if task == Task::Embed {
            // Tokenize and decode calls, answered by the embedding tokenizers.
            let calls = subjects.tokenize();
            subscribe.extend([format!("{calls}.from.*"), calls]);
        }
    }
    subscribe.extend([status_of(models), own_inbox(name)]);
    subscribe.extend(service_discovery(service_name(TOKENIZER, task)));
    Role {
        name: name.to_string(),
        publish,
        subscribe,
    }
}

/// The deployment's status subject, shared by every model (`models` holds at least the
/// default model's subjects).
fn status_of(models: &[Subjects]) -> String {
    models
        .first()
        .expect("every task has its default model's subjects; this is a bug")
        .status()
}

/// A GPU worker of `task` named `name`, serving the models of `models`: pulls and acks
/// batches of each one's streams through its durable consumers, puts split batches back,
/// deletes batches that ran out of deliveries, takes direct offers, answers requesters and
/// status requests.
fn gpu(models: &[Subjects], task: Task, name: &str) -> Role {
    let mut publish = vec![all_inboxes()];
    let mut subscribe = Vec::new();
    for subjects in models {
        subscribe.push(subjects.direct_batches_for(task));
        // Each priority lane: its stream, its durable consumer, its advisory.
        for lane in [Priority::Interactive, Priority::Bulk] {
            let stream = subjects.lane_stream(task, lane);
            let consumer = lane_consumer_name(task, lane);
            publish.push(subjects.lane_batches(task, lane));
            publish.extend(stream_setup(&stream));
            publish.extend([
                format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                format!("$JS.API.STREAM.MSG.DELETE.{stream}"),
                format!("$JS.ACK.{stream}.{consumer}.>"),
            ]);
            subscribe.push(common::queue::lane_max_deliveries_advisory(
                &stream, task, lane,
            ));
        }
    }
    subscribe.extend([status_of(models), own_inbox(name)]);
    subscribe.extend(service_discovery(service_name(GPU, task)));
    Role {
        name: name.to_string(),
        publish,
        subscribe,
    }
}

/// A requester named `name` (the gateway, an external client): publishes requests of each
/// model of `embed` and `rerank` (each list the default model's subjects first), and
/// tokenize calls to the embedding models, on its own `from` subjects and reads its own
/// inbox. The gateway also asks for status.
fn requester(embed: &[Subjects], rerank: &[Subjects], name: &str, asks_status: bool) -> Role {
    let default = &embed[0];
    let mut publish = vec![
        default.requests_from(Task::Embed, name),
        default.requests_from(Task::Rerank, name),
        default.tokenize_from(name),
    ];
    for routed in &embed[1..] {
        publish.extend([
            routed.requests_from(Task::Embed, name),
            routed.tokenize_from(name),
        ]);
    }
    for routed in &rerank[1..] {
        publish.push(routed.requests_from(Task::Rerank, name));
    }
    if asks_status {
        publish.push(default.status());
    }
    Role {
        name: name.to_string(),
        publish,
        subscribe: vec![own_inbox(name)],
    }
}

/// The operator: the whole JetStream API (streams, consumers, deleting the queue; so every
/// model's streams), status and service discovery requests, JetStream advisories; no
/// requests, no worker subjects.
fn operator(subjects: &Subjects) -> Role {
    Role {
        name: OPERATOR.to_string(),
        publish: vec![
            "$JS.API.>".to_string(),
            subjects.status(),
            "$SRV.>".to_string(),
        ],
        subscribe: vec![own_inbox(OPERATOR), "$JS.EVENT.>".to_string()],
    }
}

/// Every role of a deployment under `prefix` serving its default models and `models`: the
/// service roles, then one external client per name in `clients`.
pub fn roles(prefix: &str, clients: &[String], models: &RoutedModels) -> Vec<Role> {
    let embed = models.subjects(prefix, Task::Embed);
    let rerank = models.subjects(prefix, Task::Rerank);
    let mut roles = vec![
        requester(&embed, &rerank, GATEWAY, true),
        tokenizer(&embed, Task::Embed, TOKENIZER),
        gpu(&embed, Task::Embed, GPU),
        tokenizer(&rerank, Task::Rerank, RERANK_TOKENIZER),
        gpu(&rerank, Task::Rerank, RERANK_GPU),
        operator(&embed[0]),
    ];
    roles.extend(
        clients
            .iter()
            .map(|client| requester(&embed, &rerank, client, false)),
    );
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role<'a>(roles: &'a [Role], name: &str) -> &'a Role {
        roles.iter().find(|r| r.name == name).expect(name)
    }

    #[test]
    fn a_client_may_request_and_read_its_own_inbox_only() {
        let roles = roles("embed", &["alice".to_string()], &RoutedModels::default());
        let alice = role(&roles, "alice");
        assert_eq!(
            alice.publish,
            [
                "embed.requests.from.alice",
                "embed.rerank.from.alice",
                "embed.tokenize.from.alice"
            ]
        );
        assert_eq!(alice.subscribe, ["_INBOX.alice.>"]);
    }

    #[test]
    fn workers_use_their_own_stream_and_consumer() {
        let roles = roles("prod.embed", &[], &RoutedModels::default());
        let gpu = role(&roles, GPU);
        assert!(
            gpu.publish
                .contains(&"$JS.API.CONSUMER.MSG.NEXT.PROD_EMBED_BATCHES.gpu-workers".into())
        );
        assert!(gpu.subscribe.contains(
            &"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.PROD_EMBED_BATCHES.gpu-workers".into()
        ));
        // The bulk lane: its own stream and consumer, pulled by the same workers.
        for subject in [
            "prod.embed.batches.bulk",
            "$JS.API.CONSUMER.MSG.NEXT.PROD_EMBED_BULK_BATCHES.gpu-workers-bulk",
            "$JS.ACK.PROD_EMBED_BULK_BATCHES.gpu-workers-bulk.>",
        ] {
            assert!(gpu.publish.contains(&subject.into()), "{subject}");
        }
        assert!(gpu.subscribe.contains(
            &"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.PROD_EMBED_BULK_BATCHES.gpu-workers-bulk"
                .into()
        ));
        let embed_tokenizer = role(&roles, TOKENIZER);
        for subject in [
            "prod.embed.batches.bulk",
            "$JS.API.STREAM.CREATE.PROD_EMBED_BULK_BATCHES",
        ] {
            assert!(
                embed_tokenizer.publish.contains(&subject.into()),
                "{subject}"
            );
        }
        let rerank = role(&roles, RERANK_GPU);
        assert!(
            rerank
                .publish
                .contains(&"$JS.ACK.PROD_EMBED_RERANK_BATCHES.rerank-workers.>".into())
        );
        assert!(
            rerank
                .subscribe
                .contains(&"prod.embed.rerank.direct".into())
        );
        let tokenizer = role(&roles, RERANK_TOKENIZER);
        assert!(
            tokenizer
                .subscribe
                .contains(&"prod.embed.rerank.from.*".into())
        );
        // Tokenize calls go to the embedding tokenizers only.
        assert!(
            !tokenizer
                .subscribe
                .iter()
                .any(|s| s.contains("embed.tokenize"))
        );
        let tokenizer = role(&roles, TOKENIZER);
        for subject in ["prod.embed.tokenize", "prod.embed.tokenize.from.*"] {
            assert!(tokenizer.subscribe.contains(&subject.into()), "{subject}");
        }
        for worker in [TOKENIZER, GPU, RERANK_TOKENIZER, RERANK_GPU] {
            let worker = role(&roles, worker);
            assert!(
                !worker
                    .publish
                    .iter()
                    .any(|s| s.contains("DELETE.") && !s.starts_with("$JS.API.STREAM.MSG.DELETE.")),
                "{} may delete more than a message: {:?}",
                worker.name,
                worker.publish
            );
        }
    }

    #[test]
    fn no_role_but_the_workers_may_answer_other_inboxes() {
        let roles = roles("embed", &["client".to_string()], &RoutedModels::default());
        for role in &roles {
            let answers = role.publish.iter().any(|s| s == "_INBOX.>");
            let worker =
                [TOKENIZER, GPU, RERANK_TOKENIZER, RERANK_GPU].contains(&role.name.as_str());
            assert_eq!(answers, worker, "{}", role.name);
            assert!(
                role.subscribe.contains(&format!("_INBOX.{}.>", role.name)),
                "{}",
                role.name
            );
            assert!(!role.subscribe.contains(&"_INBOX.>".to_string()));
        }
    }

    /// `subject` as the route `embed.models.{token}` has it: work subjects moved under the
    /// route, stream names given its stem; subjects of no model unchanged.
    fn on_route(subject: &str, token: &str) -> String {
        let stem = format!("EMBED_MODELS_{}_", token.to_uppercase().replace('-', "_"));
        let subject = subject.replace("EMBED_", &stem);
        match subject.strip_prefix("embed.") {
            Some(rest) if rest != "status" => format!("embed.models.{token}.{rest}"),
            _ => subject,
        }
    }

    #[test]
    fn a_routed_model_adds_its_own_exact_subjects_to_its_tasks_roles() {
        let models = RoutedModels {
            embed: vec!["Org/Big-Model".into(), "org/big.model".into()],
            rerank: vec!["Org/Judge".into()],
        };
        let plain = roles("embed", &["alice".to_string()], &RoutedModels::default());
        let routed = roles("embed", &["alice".to_string()], &models);
        assert_eq!(plain.len(), routed.len());
        let (big, judge) = ("org-big-model", "org-judge");
        for now in &routed {
            let before = role(&plain, &now.name);
            for (list, today) in [
                (&now.publish, &before.publish),
                (&now.subscribe, &before.subscribe),
            ] {
                // Nothing but today's subjects, each maybe moved to a model's route: no
                // broader wildcard, no subject of another kind.
                for subject in list {
                    assert!(
                        today.iter().any(|t| t == subject
                            || on_route(t, big) == *subject
                            || on_route(t, judge) == *subject),
                        "{}: {subject} is not one of today's subjects on a route",
                        now.name
                    );
                }
                let mut unique = list.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), list.len(), "{}: {list:?}", now.name);
                assert!(
                    list.iter()
                        .all(|s| s != "embed.models.>" && !s.contains("models.*"))
                );
            }
        }
        let has = |name: &str, publish: bool, subject: &str| {
            let found = role(&routed, name);
            let list = if publish {
                &found.publish
            } else {
                &found.subscribe
            };
            list.iter().any(|s| s == subject)
        };
        // The embedding model: its tokenizers, GPU workers and requesters; nobody else.
        for subject in [
            "embed.models.org-big-model.batches",
            "embed.models.org-big-model.batches.bulk",
            "embed.models.org-big-model.direct",
            "$JS.API.STREAM.CREATE.EMBED_MODELS_ORG_BIG_MODEL_BATCHES",
            "$JS.API.STREAM.CREATE.EMBED_MODELS_ORG_BIG_MODEL_BULK_BATCHES",
        ] {
            assert!(has(TOKENIZER, true, subject), "{subject}");
            assert!(!has(RERANK_TOKENIZER, true, subject), "{subject}");
        }
        for subject in [
            "embed.models.org-big-model.requests",
            "embed.models.org-big-model.requests.from.*",
            "embed.models.org-big-model.tokenize",
            "embed.models.org-big-model.tokenize.from.*",
        ] {
            assert!(has(TOKENIZER, false, subject), "{subject}");
        }
        for subject in [
            "$JS.API.CONSUMER.MSG.NEXT.EMBED_MODELS_ORG_BIG_MODEL_BATCHES.gpu-workers",
            "$JS.API.CONSUMER.MSG.NEXT.EMBED_MODELS_ORG_BIG_MODEL_BULK_BATCHES.gpu-workers-bulk",
            "$JS.ACK.EMBED_MODELS_ORG_BIG_MODEL_BATCHES.gpu-workers.>",
            "$JS.API.STREAM.MSG.DELETE.EMBED_MODELS_ORG_BIG_MODEL_BATCHES",
        ] {
            assert!(has(GPU, true, subject), "{subject}");
            assert!(!has(RERANK_GPU, true, subject), "{subject}");
        }
        assert!(has(GPU, false, "embed.models.org-big-model.direct"));
        for requester in [GATEWAY, "alice"] {
            for subject in [
                format!("embed.models.org-big-model.requests.from.{requester}"),
                format!("embed.models.org-big-model.tokenize.from.{requester}"),
                format!("embed.models.org-judge.rerank.from.{requester}"),
            ] {
                assert!(has(requester, true, &subject), "{subject}");
            }
            // A reranker is not an embedding model, nor the other way round.
            for subject in [
                format!("embed.models.org-big-model.rerank.from.{requester}"),
                format!("embed.models.org-judge.requests.from.{requester}"),
            ] {
                assert!(!has(requester, true, &subject), "{subject}");
            }
        }
        // The reranker: its own pools.
        assert!(has(
            RERANK_TOKENIZER,
            false,
            "embed.models.org-judge.rerank.from.*"
        ));
        assert!(has(
            RERANK_GPU,
            true,
            "$JS.ACK.EMBED_MODELS_ORG_JUDGE_RERANK_BATCHES.rerank-workers.>"
        ));
        assert!(!has(TOKENIZER, false, "embed.models.org-judge.rerank"));
        // Status stays the deployment's, once per role.
        for role in &routed {
            let status = role.subscribe.iter().chain(&role.publish);
            assert!(
                status
                    .filter(|s| s.ends_with(".status"))
                    .all(|s| s == "embed.status")
            );
        }
    }
}
