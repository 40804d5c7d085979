//! The second-model examples (a profile of deploy/compose.cpu.yaml, deploy/k8s/second-model.yaml):
//! their workers serve a model of their own on subjects of their own
//! (`QWEN3_EMBED__NATS__MODEL_SUBJECTS`), named by `--model-name` with a name whose subject
//! token differs from the default model's, tokenizer and GPU workers naming the same model;
//! nats-auth grants that model's subjects.

use std::collections::BTreeMap;

use common::subjects::model_token;
use serde_yaml_ng::Value;

use super::{default_toml, read, strings, yaml_str};

/// The setting that puts a worker on its model's own subjects.
pub const MODEL_SUBJECTS_ENV: &str = "QWEN3_EMBED__NATS__MODEL_SUBJECTS";

/// The compose profile of the second model's services.
const COMPOSE_PROFILE: &str = "second-model";

/// The file of the Kubernetes example.
pub const K8S_FILE: &str = "second-model.yaml";

/// A compose value with its `${VAR:-default}` interpolations replaced by their defaults (what
/// compose uses when the variable is unset).
fn with_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .unwrap_or_else(|| panic!("unclosed ${{ in {value}"))
            + start;
        let inner = &rest[start + 2..end];
        let (_, default) = inner
            .split_once(":-")
            .unwrap_or_else(|| panic!("{value}: ${{{inner}}} has no default"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The value of `flag` in `args`, compose defaults applied.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.windows(2)
        .find(|w| w[0] == flag)
        .map(|w| with_defaults(&w[1]))
}

/// The route of a worker started with `env` and `args`: its model's token when it serves on
/// subjects of its own (then `--model-name` must name the model: in a container the model
/// directory is a fixed path, whose name says nothing), `None` otherwise.
pub fn route_of(env: &BTreeMap<String, String>, args: &[String], context: &str) -> Option<String> {
    match env.get(MODEL_SUBJECTS_ENV).map(String::as_str) {
        None | Some("false") => None,
        Some("true") => {
            let name = flag_value(args, "--model-name")
                .unwrap_or_else(|| panic!("{context}: model_subjects without --model-name"));
            Some(model_token(&name))
        }
        Some(other) => panic!("{context}: {MODEL_SUBJECTS_ENV}={other} is no boolean"),
    }
}

/// The default embedding model's subject token (`[gateway] model` of default.toml).
fn default_token() -> String {
    let model = default_toml()["gateway"]["model"]
        .as_str()
        .expect("[gateway] model")
        .to_string();
    model_token(&model)
}

/// A routed worker of a compose file or a manifest: where it is, its binary, its route.
pub struct RoutedWorker {
    /// File and service or Deployment, for messages.
    pub context: String,
    /// `tokenizer-worker` or `gpu-worker`.
    pub binary: String,
    /// Its model's token.
    pub token: String,
}

/// The routed workers of one example serve one model, other than the default, with a
/// tokenizer and a GPU pool; `granted` (the `--model` names given to nats-auth) covers it.
fn check_pools(workers: &[RoutedWorker], granted: &[String], what: &str) {
    assert!(
        !workers.is_empty(),
        "{what}: no worker with {MODEL_SUBJECTS_ENV}"
    );
    for binary in ["tokenizer-worker", "gpu-worker"] {
        assert!(
            workers.iter().any(|w| w.binary == binary),
            "{what}: the second model has no {binary}"
        );
    }
    let token = &workers[0].token;
    for worker in workers {
        assert_eq!(&worker.token, token, "{}: another model", worker.context);
    }
    assert_ne!(
        *token,
        default_token(),
        "{what}: the second model's subjects are the default model's"
    );
    assert!(
        granted.iter().any(|name| model_token(name) == *token),
        "{what}: nats-auth grants no --model with token {token} (it grants {granted:?})"
    );
}

/// Compose: the second model's services (profile `second-model`), and nats-auth's
/// `--model` for it.
pub fn check_compose(doc: &Value, file: &str) {
    let services = doc["services"].as_mapping().expect("services");
    let mut workers = Vec::new();
    for (name, service) in services {
        let context = format!("{file} service {}", yaml_str(name));
        let env: BTreeMap<String, String> = service["environment"]
            .as_mapping()
            .map(|m| m.iter().map(|(k, v)| (yaml_str(k), yaml_str(v))).collect())
            .unwrap_or_default();
        let Some(token) = route_of(&env, &strings(&service["command"]), &context) else {
            continue;
        };
        assert!(
            strings(&service["profiles"])
                .iter()
                .any(|p| p == COMPOSE_PROFILE),
            "{context}: a second model's service outside the {COMPOSE_PROFILE} profile"
        );
        let image = yaml_str(&service["image"]);
        let binary = if image.contains("tokenizer-worker") {
            "tokenizer-worker"
        } else {
            "gpu-worker"
        };
        workers.push(RoutedWorker {
            context,
            binary: binary.to_string(),
            token,
        });
    }
    if workers.is_empty() && file != "compose.cpu.yaml" {
        return;
    }
    let auth_args = strings(&doc["services"]["nats-auth"]["command"]);
    let granted: Vec<String> = auth_args
        .windows(2)
        .filter(|w| w[0] == "--model")
        .map(|w| with_defaults(&w[1]))
        .collect();
    assert_eq!(
        flag_value(&auth_args, "--out").as_deref(),
        Some("/var/lib/qwen3-embed/nats-auth"),
        "{file}: nats-auth writes where the image's CMD does"
    );
    check_pools(&workers, &granted, file);
}

/// Kubernetes: the routed workers of deploy/k8s (all in [`K8S_FILE`]) and the README's
/// nats-auth line for their model.
pub fn check_k8s(workers: &[RoutedWorker]) {
    for worker in workers {
        assert!(
            worker.context.starts_with(K8S_FILE),
            "{}: models on their own subjects belong in {K8S_FILE}",
            worker.context
        );
    }
    let readme = read("deploy/k8s/README.md");
    let granted: Vec<String> = readme
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("nats-auth --out ./nats-auth --model ")
        })
        .map(|name| name.trim().to_string())
        .collect();
    check_pools(workers, &granted, "deploy/k8s");
}

#[test]
fn compose_defaults_are_read_as_compose_reads_them() {
    assert_eq!(with_defaults("${A:-x/y}"), "x/y");
    assert_eq!(with_defaults("a-${B:-1}-${C:-2}"), "a-1-2");
    assert_eq!(with_defaults("plain"), "plain");
}
