//! The Kubernetes manifests (deploy/k8s): Deployments, probes, the ConfigMap, the NATS
//! Secret, KEDA ScaledObjects, HPAs and the kustomization agree with the code.

use std::collections::{BTreeMap, BTreeSet};

use common::queue::{GPU_CONSUMER, RERANK_CONSUMER, lane_consumer_name};
use common::subjects::{DEFAULT_PREFIX, Subjects, Task};
use common::wire::Priority;
use e2e_tests::repo_root;
use serde_yaml_ng::Value;

use super::containers::{dockerfile_images, image_repository};
use super::{
    IDENTITY_ENV, NKEY_FILE_ENV, check_env_name, default_toml, device_arg, expected_role,
    files_under, gateway_port, read, second_model, sources_and_config_doc, strings, yaml_file,
    yaml_str,
};

/// The subjects of the shipped configuration, whose prefix must be the code's default.
fn shipped_subjects() -> Subjects {
    let configured = default_toml()["nats"]["subject_prefix"]
        .as_str()
        .expect("[nats] subject_prefix")
        .to_string();
    assert_eq!(
        configured, DEFAULT_PREFIX,
        "deploy/config/default.toml and common::subjects::DEFAULT_PREFIX disagree"
    );
    Subjects::new(configured)
}

/// The JetStream stream of `task`'s batches and its GPU workers' durable consumer, named by
/// `common` (`Subjects::batch_stream_for`, `queue::GPU_CONSUMER`, `queue::RERANK_CONSUMER`).
fn stream_and_consumer(task: Task) -> (String, &'static str) {
    let consumer = match task {
        Task::Embed => GPU_CONSUMER,
        Task::Rerank => RERANK_CONSUMER,
    };
    (shipped_subjects().batch_stream_for(task), consumer)
}

/// The paths the gateway serves under the shipped `root_path` (its own route table).
fn gateway_routes() -> BTreeSet<String> {
    let root_path = default_toml()["gateway"]["root_path"]
        .as_str()
        .expect("[gateway] root_path")
        .to_string();
    let routes: BTreeSet<String> = gateway::http::routes::routes(&root_path)
        .into_iter()
        .map(|route| route.path)
        .collect();
    assert!(routes.contains("/health"), "routes: {routes:?}");
    routes
}

/// The Kubernetes Secret holding auth.conf and the seeds.
const NATS_AUTH_SECRET: &str = "qwen3-embed-nats-auth";

/// The users `nats-auth` writes for the shipped prefix: auth.conf holds one NKey user per
/// role, with allow lists.
fn nats_auth_conf() -> String {
    let dir = std::env::temp_dir().join(format!("deploy-manifests-auth-{}", std::process::id()));
    let settings = embed_jsonl::nats_auth::Settings {
        out: dir.clone(),
        prefix: shipped_subjects().prefix().to_string(),
        clients: vec![embed_jsonl::nats_auth::DEFAULT_CLIENT.into()],
        rotate: vec![],
        models: embed_jsonl::nats_auth::RoutedModels::default(),
    };
    embed_jsonl::nats_auth::generate(&settings).expect("nats-auth writes the credentials");
    let conf = read(dir.join(embed_jsonl::nats_auth::AUTH_CONF));
    std::fs::remove_dir_all(&dir).unwrap();
    conf
}

/// Every document of deploy/k8s/*.yaml, with its file name.
fn k8s_documents() -> Vec<(String, Value)> {
    let dir = repo_root().join("deploy/k8s");
    let mut docs = Vec::new();
    for path in files_under(&dir, &|p| p.extension().is_some_and(|e| e == "yaml")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in yaml_file(&path) {
            docs.push((name.clone(), doc));
        }
    }
    docs
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

#[test]
fn k8s_manifests_agree_with_the_code() {
    let images = dockerfile_images();
    let known = sources_and_config_doc();
    let defaults = default_toml();
    let port = gateway_port();
    let routes = gateway_routes();
    let docs = k8s_documents();

    // The ConfigMap is default.toml + production.toml, verbatim, and parses.
    let config = find(&docs, "ConfigMap", "qwen3-embed-config");
    for file in ["default.toml", "production.toml"] {
        let shipped = read(format!("deploy/config/{file}"));
        let data = yaml_str(&config["data"][file]);
        assert_eq!(
            data.trim(),
            shipped.trim(),
            "ConfigMap {file} drifted from deploy/config: run deploy/k8s/sync-configmap.sh"
        );
        let _: toml::Table = data.parse().unwrap();
    }
    let production: toml::Table = yaml_str(&config["data"]["production.toml"])
        .parse()
        .unwrap();
    assert_eq!(production["queue"]["storage"].as_str(), Some("file"));
    assert_eq!(
        production["gpu"]["gpu_memory_fraction"].as_float(),
        Some(0.45)
    );
    assert_eq!(
        production["gateway"]["max_concurrent_queries"].as_integer(),
        Some(200)
    );

    let mut deployments = BTreeMap::new();
    let mut routed = Vec::new();
    for (file, doc) in docs.iter().filter(|(_, d)| d["kind"] == "Deployment") {
        let name = yaml_str(&doc["metadata"]["name"]);
        let context = format!("{file} Deployment {name}");
        let pod = &doc["spec"]["template"]["spec"];
        let labels = &doc["spec"]["template"]["metadata"]["labels"];
        assert_eq!(&doc["spec"]["selector"]["matchLabels"], labels, "{context}");
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{context}"
        );
        let containers = pod["containers"].as_sequence().expect("containers");
        assert_eq!(containers.len(), 1, "{context}");
        let container = &containers[0];
        let image = yaml_str(&container["image"]);
        let source = images
            .get(image_repository(&image))
            .unwrap_or_else(|| panic!("{context}: image {image} is built by no Dockerfile"));
        assert_ne!(
            source.target, "gpu-worker-cpu",
            "{context}: the CPU worker in k8s"
        );
        let env: BTreeMap<String, String> = container["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .map(|e| {
                // A value from a Secret (`valueFrom`) has no literal value.
                let value = e["value"].as_str().unwrap_or_default().to_string();
                (yaml_str(&e["name"]), value)
            })
            .collect();
        for name in env.keys() {
            check_env_name(name, &known, &defaults, &context);
        }
        assert_eq!(env["QWEN3_EMBED_PROFILE"], "production", "{context}");
        if context.contains("gateway") {
            // Production serves a public address only with API keys: from a Secret.
            let keys = container["env"]
                .as_sequence()
                .expect("env")
                .iter()
                .find(|e| e["name"].as_str() == Some("QWEN3_EMBED_API_KEYS"))
                .unwrap_or_else(|| panic!("{context}: no QWEN3_EMBED_API_KEYS"));
            assert!(
                keys["valueFrom"]["secretKeyRef"]["name"].as_str().is_some(),
                "{context}: the API keys come from a Secret"
            );
        }
        assert!(env["NATS_URL"].starts_with("nats://nats."), "{context}");
        let mounts = container["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts");
        let mount_of = |path: &str| {
            mounts
                .iter()
                .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
                .unwrap_or_else(|| panic!("{context}: nothing mounted for {path}"))
        };
        let volume_of = |mount: &Value| {
            pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("{context}: no volume {:?}", mount["name"]))
                .clone()
        };
        let config_mount = mount_of(&env["QWEN3_EMBED_CONFIG_DIR"]);
        assert_eq!(config_mount["readOnly"].as_bool(), Some(true), "{context}");
        assert_eq!(
            volume_of(config_mount)["configMap"]["name"],
            "qwen3-embed-config",
            "{context}"
        );
        // Its own NATS identity, and only that role's seed out of the Secret.
        let role = expected_role(&source.binary, &strings(&container["args"]));
        assert_eq!(
            env.get(IDENTITY_ENV).map(String::as_str),
            Some(role),
            "{context}: NATS identity"
        );
        let seed = &env[NKEY_FILE_ENV];
        let seeds = volume_of(mount_of(seed));
        assert_eq!(
            seeds["secret"]["secretName"], NATS_AUTH_SECRET,
            "{context}: seed"
        );
        let items: Vec<String> = seeds["secret"]["items"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{context}: the whole Secret is mounted"))
            .iter()
            .map(|item| yaml_str(&item["key"]))
            .collect();
        assert_eq!(items, [format!("{role}.nk")], "{context}: seeds mounted");
        assert!(seed.ends_with(&format!("/{role}.nk")), "{context}: {seed}");
        if source.binary != "gateway" {
            let model = mount_of(&env["QWEN3_EMBED_MODEL_DIR"]);
            assert_eq!(model["readOnly"].as_bool(), Some(true), "{context}");
            assert!(
                volume_of(model)["persistentVolumeClaim"].is_mapping(),
                "{context}"
            );
        }
        // Probes: HTTP ones only on the gateway, on a route it serves, on its port.
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let Some(get) = container.get(probe).and_then(|p| p.get("httpGet")) else {
                continue;
            };
            assert_eq!(source.binary, "gateway", "{context}: workers serve no HTTP");
            let path = yaml_str(&get["path"]);
            assert!(
                routes.contains(&path),
                "{context}: {probe} {path} is not served"
            );
            assert!(path.ends_with("/health"), "{context}: {probe} {path}");
            assert_eq!(get["port"].as_u64(), Some(port), "{context}: {probe} port");
        }
        if source.binary == "gateway" {
            assert!(
                container["readinessProbe"]["httpGet"].is_mapping(),
                "{context}"
            );
            let ports = container["ports"].as_sequence().expect("ports");
            assert_eq!(ports[0]["containerPort"].as_u64(), Some(port), "{context}");
        }
        let args = strings(&container["args"]);
        let task = if args
            .windows(2)
            .any(|w| w[0] == "--task" && w[1] == "rerank")
        {
            "rerank"
        } else {
            "embed"
        };
        if image.contains("gpu-worker-cuda") {
            assert_eq!(
                container["resources"]["limits"]["nvidia.com/gpu"].as_u64(),
                Some(1),
                "{context}"
            );
            assert_eq!(device_arg(&args), Some(0), "{context}: the pod's only GPU");
            let tokenizer_batch = production["tokenizer"]["max_batch_tokens"]
                .as_integer()
                .unwrap();
            let gpu_batch: i64 = env["QWEN3_EMBED__GPU__MAX_BATCH_TOKENS"].parse().unwrap();
            assert!(gpu_batch >= tokenizer_batch, "{context}: max_batch_tokens");
        }
        let route = second_model::route_of(&env, &args, &context);
        if let Some(token) = &route {
            routed.push(second_model::RoutedWorker {
                context: context.clone(),
                binary: source.binary.clone(),
                token: token.clone(),
            });
        }
        deployments.insert(
            (source.binary.clone(), task.to_string(), route),
            (name, labels.clone()),
        );
    }
    second_model::check_k8s(&routed);
    let deployment = |binary: &str, task: &str| {
        deployments
            .get(&(binary.to_string(), task.to_string(), None))
            .unwrap_or_else(|| panic!("no Deployment runs {binary} for {task}"))
    };
    for binary in ["tokenizer-worker", "gpu-worker"] {
        deployment(binary, "rerank");
    }

    // The gateway Service reaches the gateway pods on 4008.
    let (gateway, gateway_labels) = deployment("gateway", "embed");
    let service = find(&docs, "Service", gateway);
    assert_eq!(&service["spec"]["selector"], gateway_labels);
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"].as_u64(), Some(port));

    // KEDA scales each task's GPU workers on the code's stream and consumer of that task
    // (and of that model: a model on subjects of its own has streams of its own).
    let gpu_pools = deployments
        .iter()
        .filter(|((binary, _, _), _)| binary == "gpu-worker");
    for ((_, task, route), (gpu, _)) in gpu_pools {
        let task = if task == "rerank" {
            Task::Rerank
        } else {
            Task::Embed
        };
        let subjects = shipped_subjects().routed(route.as_deref());
        let (_, consumer) = stream_and_consumer(task);
        let stream = subjects.batch_stream_for(task);
        let scaled = docs
            .iter()
            .map(|(_, d)| d)
            .find(|d| {
                d["kind"] == "ScaledObject" && d["spec"]["scaleTargetRef"]["name"] == gpu.as_str()
            })
            .unwrap_or_else(|| panic!("no KEDA ScaledObject scales {gpu}"));
        assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
        // One trigger per priority lane: the interactive stream's consumer, then the bulk
        // one's.
        let bulk = (
            subjects.lane_stream(task, Priority::Bulk),
            lane_consumer_name(task, Priority::Bulk),
        );
        for (k, (stream, consumer)) in [(stream, consumer), bulk].into_iter().enumerate() {
            let trigger = &scaled["spec"]["triggers"][k];
            assert_eq!(trigger["type"], "nats-jetstream");
            let meta = &trigger["metadata"];
            assert_eq!(yaml_str(&meta["stream"]), stream, "{gpu}");
            assert_eq!(yaml_str(&meta["consumer"]), consumer, "{gpu}");
            assert_eq!(meta["account"], "$G");
            assert!(yaml_str(&meta["natsServerMonitoringEndpoint"]).ends_with(":8222"));
        }
    }

    // HPAs scale the tokenizer workers on CPU, the default model's among them.
    let (tokenizer, _) = deployment("tokenizer-worker", "embed");
    let tokenizers: BTreeSet<&str> = deployments
        .iter()
        .filter(|((binary, _, _), _)| binary == "tokenizer-worker")
        .map(|(_, (name, _))| name.as_str())
        .collect();
    let hpas: Vec<&Value> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == "HorizontalPodAutoscaler")
        .collect();
    for hpa in &hpas {
        let target = yaml_str(&hpa["spec"]["scaleTargetRef"]["name"]);
        assert!(
            tokenizers.contains(target.as_str()),
            "an HPA scales {target}"
        );
        assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    }
    assert!(
        hpas.iter()
            .any(|h| h["spec"]["scaleTargetRef"]["name"] == tokenizer.as_str()),
        "no HPA scales {tokenizer}"
    );

    // NATS comes from the official chart with JetStream and monitoring on.
    let values = yaml_file(&repo_root().join("deploy/k8s/nats-values.yaml")).remove(0);
    assert_eq!(
        values["config"]["jetstream"]["enabled"].as_bool(),
        Some(true)
    );
    assert_eq!(values["config"]["monitor"]["port"].as_u64(), Some(8222));
    // ... and admits only the users of nats-auth's auth.conf, mounted from the Secret.
    let include = yaml_str(&values["config"]["merge"]["$include"]);
    assert!(
        include.ends_with(&format!("/{}", embed_jsonl::nats_auth::AUTH_CONF)),
        "nats-values.yaml includes {include}"
    );
    let volumes = values["podTemplate"]["patch"]
        .as_sequence()
        .expect("podTemplate.patch adds the Secret volume");
    assert!(
        volumes.iter().any(|p| {
            let secret = &p["value"]["secret"];
            secret["secretName"] == NATS_AUTH_SECRET
                && secret["items"].as_sequence().is_some_and(|items| {
                    items.len() == 1 && items[0]["key"] == embed_jsonl::nats_auth::AUTH_CONF
                })
        }),
        "nats-values.yaml mounts auth.conf (only) from {NATS_AUTH_SECRET}"
    );
    let readme = read("deploy/k8s/README.md");
    assert!(
        readme.contains("nats-auth --out") && readme.contains(NATS_AUTH_SECRET),
        "deploy/k8s/README.md explains the Secret"
    );
    let conf = nats_auth_conf();
    for role in [
        "gateway",
        "tokenizer",
        "gpu",
        "rerank-tokenizer",
        "rerank-gpu",
    ] {
        assert!(
            conf.contains(&format!("# {role}\n")),
            "auth.conf has no {role}"
        );
    }
    assert!(read("deploy/k8s/README.md").contains("nats/nats"));

    // Kustomize lists every manifest but the second-model example (applied by hand, once
    // its weights are on the volume) and only images the Dockerfiles build.
    let kustomization = find_kustomization(&docs);
    let resources = strings(&kustomization["resources"]);
    for (file, doc) in &docs {
        if file == second_model::K8S_FILE {
            assert!(!resources.contains(file), "kustomization.yaml lists {file}");
        } else if doc.get("kind").is_some() && doc["kind"] != "Kustomization" {
            assert!(resources.contains(file), "kustomization.yaml misses {file}");
        }
    }
    for image in kustomization["images"].as_sequence().unwrap() {
        let name = yaml_str(&image["name"]);
        assert!(images.contains_key(&name), "kustomization image {name}");
    }
}

fn find_kustomization(docs: &[(String, Value)]) -> &Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "Kustomization")
        .expect("deploy/k8s/kustomization.yaml")
}
