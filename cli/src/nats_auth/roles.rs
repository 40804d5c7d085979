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

use common::queue::lane_consumer_name;
use common::subjects::{INBOX_ROOT, Subjects, Task};
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

/// A tokenizer worker of `task` named `name`: takes requests (bare, and from every
/// identity), creates the stream, queues batches, offers them directly, answers requesters
/// and status requests.
fn tokenizer(subjects: &Subjects, task: Task, name: &str) -> Role {
    let requests = subjects.requests_for(task);
    let mut publish = vec![
        subjects.batches_for(task),
        subjects.lane_batches(task, Priority::Bulk),
        subjects.direct_batches_for(task),
        all_inboxes(),
    ];
    publish.extend(stream_setup(&subjects.batch_stream_for(task)));
    publish.extend(stream_setup(&subjects.lane_stream(task, Priority::Bulk)));
    let mut subscribe = vec![
        requests.clone(),
        format!("{requests}.from.*"),
        subjects.status(),
        own_inbox(name),
    ];
    if task == Task::Embed {
        // Tokenize and decode calls, answered by the embedding tokenizers.
        let calls = subjects.tokenize();
        subscribe.extend([format!("{calls}.from.*"), calls]);
    }
    subscribe.extend(service_discovery(service_name(TOKENIZER, task)));
    Role {
        name: name.to_string(),
        publish,
        subscribe,
    }
}

/// A GPU worker of `task` named `name`: pulls and acks batches of its stream through its
/// durable consumer, puts split batches back, deletes batches that ran out of deliveries,
/// takes direct offers, answers requesters and status requests.
fn gpu(subjects: &Subjects, task: Task, name: &str) -> Role {
    let mut publish = vec![all_inboxes()];
    let mut subscribe = vec![
        subjects.direct_batches_for(task),
        subjects.status(),
        own_inbox(name),
    ];
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
    subscribe.extend(service_discovery(service_name(GPU, task)));
    Role {
        name: name.to_string(),
        publish,
        subscribe,
    }
}

/// A requester named `name` (the gateway, an external client): publishes requests of both
/// tasks and tokenize calls on its own `from` subjects and reads its own inbox. The gateway also asks for
/// status.
fn requester(subjects: &Subjects, name: &str, asks_status: bool) -> Role {
    let mut publish = vec![
        subjects.requests_from(Task::Embed, name),
        subjects.requests_from(Task::Rerank, name),
        subjects.tokenize_from(name),
    ];
    if asks_status {
        publish.push(subjects.status());
    }
    Role {
        name: name.to_string(),
        publish,
        subscribe: vec![own_inbox(name)],
    }
}

/// The operator: the whole JetStream API (streams, consumers, deleting the queue), status
/// and service discovery requests, JetStream advisories; no requests, no worker subjects.
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

/// Every role of a deployment under `prefix`: the service roles, then one external client
/// per name in `clients`.
pub fn roles(prefix: &str, clients: &[String]) -> Vec<Role> {
    let subjects = Subjects::new(prefix);
    let mut roles = vec![
        requester(&subjects, GATEWAY, true),
        tokenizer(&subjects, Task::Embed, TOKENIZER),
        gpu(&subjects, Task::Embed, GPU),
        tokenizer(&subjects, Task::Rerank, RERANK_TOKENIZER),
        gpu(&subjects, Task::Rerank, RERANK_GPU),
        operator(&subjects),
    ];
    roles.extend(
        clients
            .iter()
            .map(|client| requester(&subjects, client, false)),
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
        let roles = roles("embed", &["alice".to_string()]);
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
        let roles = roles("prod.embed", &[]);
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
        let roles = roles("embed", &["client".to_string()]);
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
}
