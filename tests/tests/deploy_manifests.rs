//! The deployment files (deploy/containers, deploy/compose*.yaml, deploy/k8s, deploy/systemd,
//! deploy/grafana, docs/operations.md) agree with the code: ports, probe routes, image
//! names, environment variables, the production configuration, the JetStream stream and
//! consumer names, and metric names. Everything is read as text or parsed statically; no
//! container engine or cluster is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::queue::{GPU_CONSUMER, RERANK_CONSUMER, lane_consumer_name};
use common::subjects::{DEFAULT_PREFIX, Subjects, Task};
use common::wire::Priority;
use e2e_tests::repo_root;
use serde::Deserialize;
use serde_yaml_ng::Value;

// ---------------------------------------------------------------------------------------
// Reading the code and the shipped configuration.
// ---------------------------------------------------------------------------------------

fn read(path: impl AsRef<Path>) -> String {
    let path = repo_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Files under `dir` (recursively) whose name satisfies `keep`, sorted.
fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if keep(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn default_toml() -> toml::Table {
    read("deploy/config/default.toml")
        .parse()
        .expect("deploy/config/default.toml parses")
}

/// The gateway port of deploy/config/default.toml.
fn gateway_port() -> u64 {
    let port = default_toml()["gateway"]["port"]
        .as_integer()
        .expect("[gateway] port is an integer");
    u64::try_from(port).expect("a positive port")
}

/// Every source file of the binaries and the shared crate, concatenated, plus
/// docs/configuration.md: where every environment variable the binaries read is named.
fn sources_and_config_doc() -> String {
    let mut text = read("docs/configuration.md");
    for krate in ["common", "gateway", "tokenizer-worker", "gpu-worker"] {
        for file in files_under(&repo_root().join(krate).join("src"), &|p| {
            p.extension().is_some_and(|e| e == "rs")
        }) {
            text.push_str(&std::fs::read_to_string(file).unwrap());
        }
    }
    text
}

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

/// Metric name -> label names, from the `counter!`/`gauge!`/`histogram!` calls of
/// gateway/src/metrics.rs.
fn gateway_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let source = read("gateway/src/metrics.rs");
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for kind in ["counter!(", "gauge!(", "histogram!("] {
        for piece in source.split(kind).skip(1) {
            let Some(call) = piece.strip_prefix('"') else {
                continue;
            };
            let end = [".increment(", ".absolute(", ".set(", ".record(", ";"]
                .iter()
                .filter_map(|m| call.find(m))
                .min()
                .unwrap_or(call.len());
            let call = &call[..end];
            let name = &call[..call.find('"').unwrap()];
            let labels = metrics.entry(name.to_string()).or_default();
            // `"label" => value`: every piece before a `" =>` ends with a label literal.
            let pieces: Vec<&str> = call.split("\" =>").collect();
            for piece in &pieces[..pieces.len() - 1] {
                let start = piece.rfind('"').expect("a label literal");
                labels.insert(piece[start + 1..].to_string());
            }
        }
    }
    assert!(
        metrics.contains_key("embed_http_request_duration_seconds"),
        "parsed {metrics:?}"
    );
    assert_eq!(
        metrics["embed_http_requests_total"],
        BTreeSet::from(["route".to_string(), "status".to_string()]),
        "label parsing is off"
    );
    metrics
}

/// Panics unless `name` is an environment variable the binaries read (or the dynamic
/// loader's, for the CUDA libraries). `QWEN3_EMBED__SECTION__KEY` must name a real key.
fn check_env_name(name: &str, known: &str, defaults: &toml::Table, context: &str) {
    if let Some(rest) = name.strip_prefix("QWEN3_EMBED__") {
        let (section, key) = rest
            .split_once("__")
            .unwrap_or_else(|| panic!("{context}: {name} is not QWEN3_EMBED__SECTION__KEY"));
        let (section, key) = (section.to_lowercase(), key.to_lowercase());
        let in_defaults = defaults.get(&section).and_then(|s| s.get(&key)).is_some();
        let documented = read("docs/configuration.md").contains(&format!("| `{key}`"));
        assert!(
            in_defaults || documented,
            "{context}: {name} names [{section}] {key}, which no configuration has"
        );
        return;
    }
    if name == "LD_LIBRARY_PATH" {
        return;
    }
    let word = |i: usize| {
        let before = known[..i].chars().next_back();
        let after = known[i + name.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    };
    assert!(
        known.match_indices(name).any(|(i, _)| word(i)),
        "{context}: environment variable {name} is read by no binary (not in */src or docs/configuration.md)"
    );
}

// ---------------------------------------------------------------------------------------
// Dockerfiles.
// ---------------------------------------------------------------------------------------

/// One build stage of a Dockerfile.
#[derive(Debug, Default, Clone)]
struct Stage {
    name: String,
    from: String,
    /// Instructions (keyword upper-cased, continuation lines joined), own stage only.
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn get(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut args = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut logical = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && logical.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            logical.push_str(head);
            logical.push(' ');
            continue;
        }
        logical.push_str(trimmed);
        let instruction = std::mem::take(&mut logical);
        let (keyword, rest) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((&instruction, ""));
        let (keyword, rest) = (keyword.to_uppercase(), rest.trim().to_string());
        if keyword == "ARG" && stages.is_empty() {
            if let Some((k, v)) = rest.split_once('=') {
                args.insert(k.to_string(), v.to_string());
            }
        } else if keyword == "FROM" {
            let mut from = rest.clone();
            for (k, v) in &args {
                from = from.replace(&format!("${{{k}}}"), v);
            }
            let mut words = from.split_whitespace();
            let image = words.next().unwrap_or_default().to_string();
            let name = match (words.next(), words.next()) {
                (Some(a), Some(n)) if a.eq_ignore_ascii_case("as") => n.to_string(),
                _ => String::new(),
            };
            stages.push(Stage {
                name,
                from: image,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before FROM")
                .instructions
                .push((keyword, rest));
        }
    }
    stages
}

/// The JSON-array form of an ENTRYPOINT/CMD/HEALTHCHECK CMD.
fn exec_form(value: &str) -> Vec<String> {
    serde_json::from_str(value).unwrap_or_else(|e| panic!("not exec form: {value}: {e}"))
}

/// Where an image is built: Dockerfile (relative to the repository root) and stage.
#[derive(Debug, Clone)]
struct ImageSource {
    dockerfile: String,
    target: String,
    /// The binary its ENTRYPOINT runs.
    binary: String,
}

/// Image name -> its Dockerfile and stage, from the `io.qwen3-embed.image` labels.
fn dockerfile_images() -> BTreeMap<String, ImageSource> {
    let dir = repo_root().join("deploy/containers");
    let dockerfiles = files_under(&dir, &|p| p.extension().is_some_and(|e| e == "Dockerfile"));
    assert!(dockerfiles.len() >= 2, "a CPU and a CUDA Dockerfile");
    let mut images = BTreeMap::new();
    for path in dockerfiles {
        let relative = path
            .strip_prefix(repo_root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let stages = parse_dockerfile(&text);
        let all: Vec<&(String, String)> = stages.iter().flat_map(|s| &s.instructions).collect();
        let build = all
            .iter()
            .find(|(k, v)| k == "RUN" && v.contains("cargo build"))
            .unwrap_or_else(|| panic!("{relative}: no cargo build"));
        assert!(
            build.1.contains("--release") && build.1.contains("--locked"),
            "{relative}: cargo build --release --locked"
        );
        for stage in &stages {
            let Some(label) = stage
                .get("LABEL")
                .iter()
                .find_map(|l| l.split("io.qwen3-embed.image=\"").nth(1))
                .map(|l| l[..l.find('"').unwrap()].to_string())
            else {
                continue;
            };
            assert!(!stage.name.is_empty(), "{relative}: labelled stage unnamed");
            // USER: numeric, in this stage or the stage it is built FROM.
            let mut chain = vec![stage];
            while let Some(parent) = stages.iter().find(|s| s.name == chain.last().unwrap().from) {
                chain.push(parent);
            }
            let user = chain
                .iter()
                .find_map(|s| s.get("USER").last().copied())
                .unwrap_or_else(|| panic!("{relative} {}: no USER", stage.name));
            assert!(
                user.split(':')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    && !user.starts_with('0'),
                "{relative} {}: USER {user} is not a numeric non-root id",
                stage.name
            );
            let entrypoint = stage
                .get("ENTRYPOINT")
                .last()
                .map(|e| exec_form(e))
                .unwrap_or_else(|| panic!("{relative} {}: no ENTRYPOINT", stage.name));
            let binary = entrypoint[0]
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            assert!(
                ["gateway", "tokenizer-worker", "gpu-worker", "nats-auth"]
                    .contains(&binary.as_str()),
                "{relative} {}: ENTRYPOINT runs {binary}",
                stage.name
            );
            assert!(
                all.iter().any(|(k, v)| k == "COPY"
                    && v.contains(&format!("/{binary} "))
                    && v.contains(&format!("/usr/local/bin/{binary}"))),
                "{relative} {}: {binary} is not copied from the builder",
                stage.name
            );
            if binary == "gateway" {
                let port = gateway_port().to_string();
                assert_eq!(stage.get("EXPOSE"), vec![port.as_str()], "{relative}");
                let check = stage
                    .get("HEALTHCHECK")
                    .last()
                    .copied()
                    .unwrap_or_else(|| panic!("{relative}: gateway has no HEALTHCHECK"));
                let url = format!("127.0.0.1:{port}/health");
                assert!(check.contains(&url), "{relative}: HEALTHCHECK {check}");
            }
            if label.ends_with("-cuda") {
                assert!(
                    stage.from.starts_with("nvidia/cuda:13.") && stage.from.contains("-runtime-"),
                    "{relative}: the CUDA image needs nvidia/cuda:13.x-runtime-* (NVRTC + cuBLAS); got {}",
                    stage.from
                );
                assert_eq!(
                    entrypoint[1..],
                    ["--backend".to_string(), "cuda".to_string()]
                );
            }
            let previous = images.insert(
                label.clone(),
                ImageSource {
                    dockerfile: relative.clone(),
                    target: stage.name.clone(),
                    binary,
                },
            );
            assert!(previous.is_none(), "image {label} declared twice");
        }
        let ignore = format!("{}.dockerignore", path.display());
        let ignore = std::fs::read_to_string(&ignore).unwrap_or_else(|e| panic!("{ignore}: {e}"));
        for excluded in ["target", ".venv*", ".git"] {
            assert!(
                ignore.lines().any(|l| l.trim() == excluded),
                "{relative}.dockerignore misses {excluded}"
            );
        }
    }
    for name in [
        "qwen3-embed/gateway",
        "qwen3-embed/tokenizer-worker",
        "qwen3-embed/gpu-worker-cpu",
        "qwen3-embed/gpu-worker-cuda",
        "qwen3-embed/nats-auth",
    ] {
        assert!(images.contains_key(name), "no Dockerfile builds {name}");
    }
    images
}

/// `repo/name:tag` or `repo/name:${VAR:-tag}` -> `repo/name`.
fn image_repository(image: &str) -> &str {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    image[slash..]
        .find(':')
        .map_or(image, |colon| &image[..slash + colon])
}

#[test]
fn dockerfiles_build_each_binary_as_a_numbered_non_root_user() {
    let images = dockerfile_images();
    assert_eq!(images["qwen3-embed/gateway"].binary, "gateway");
    assert_eq!(images["qwen3-embed/gpu-worker-cuda"].binary, "gpu-worker");
}

#[test]
fn dockerfile_parser_sees_a_missing_user() {
    let stages = parse_dockerfile("ARG X=1\nFROM a:${X} AS b\nRUN x \\\n  y\nUSER 10\n");
    assert_eq!(stages[0].from, "a:1");
    assert_eq!(stages[0].get("RUN"), vec!["x  y"]);
    assert_eq!(
        image_repository("qwen3-embed/gateway:${IMAGE_TAG:-latest}"),
        "qwen3-embed/gateway"
    );
    assert_eq!(
        image_repository("localhost:5000/x/y:1"),
        "localhost:5000/x/y"
    );
}

// ---------------------------------------------------------------------------------------
// Compose.
// ---------------------------------------------------------------------------------------

fn yaml_file(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| s.iter().map(yaml_str).collect())
        .unwrap_or_default()
}

/// The value of `--device` in a worker's arguments.
fn device_arg(args: &[String]) -> Option<u64> {
    args.iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1))
        .map(|d| d.parse().expect("--device takes an integer"))
}

/// A profile's effective value of `[section] key`: environment override, else the profile
/// file, else default.toml.
fn effective(env: &BTreeMap<String, String>, profile: &str, section: &str, key: &str) -> f64 {
    let var = format!(
        "QWEN3_EMBED__{}__{}",
        section.to_uppercase(),
        key.to_uppercase()
    );
    if let Some(value) = env.get(&var) {
        return value.parse().unwrap();
    }
    let number = |table: &toml::Table| {
        table
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)))
    };
    let profile: toml::Table = read(format!("deploy/config/{profile}.toml"))
        .parse()
        .unwrap();
    number(&profile)
        .or_else(|| number(&default_toml()))
        .unwrap_or_else(|| panic!("[{section}] {key} is in no configuration file"))
}

#[test]
fn compose_files_agree_with_the_code() {
    let images = dockerfile_images();
    let known = sources_and_config_doc();
    let defaults = default_toml();
    let port = gateway_port();
    let files = files_under(&repo_root().join("deploy"), &|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        p.parent() == Some(&repo_root().join("deploy"))
            && name.starts_with("compose")
            && name.ends_with(".yaml")
    });
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for layout in [
        "compose.yaml",
        "compose.multi-gpu.yaml",
        "compose.high-load.yaml",
    ] {
        assert!(names.iter().any(|n| n == layout), "missing deploy/{layout}");
    }
    for (path, file) in files.iter().zip(&names) {
        let doc = yaml_file(path).remove(0);
        let services = doc["services"].as_mapping().expect("services");
        let nats = &doc["services"]["nats"];
        let nats_image = yaml_str(&nats["image"]);
        assert!(
            nats_image.starts_with("nats:"),
            "{file}: official nats image"
        );
        let nats_args = strings(&nats["command"]);
        assert!(
            nats_args.iter().any(|a| a == "-js" || a == "--jetstream"),
            "{file}: NATS without JetStream"
        );
        check_compose_nats_auth(&doc, &images, file);
        let mut gpu_devices = Vec::new();
        let mut tokenizer_batch = 0.0_f64;
        let mut gpu_batches = Vec::new();
        for (name, service) in services {
            let name = yaml_str(name);
            let context = format!("{file} service {name}");
            if name == "nats" || name == NATS_AUTH_SERVICE {
                continue;
            }
            let image = yaml_str(&service["image"]);
            let repository = image_repository(&image);
            let source = images
                .get(repository)
                .unwrap_or_else(|| panic!("{context}: image {image} is built by no Dockerfile"));
            if let Some(build) = service.get("build") {
                assert_eq!(yaml_str(&build["context"]), "..", "{context}");
                assert_eq!(
                    yaml_str(&build["dockerfile"]),
                    source.dockerfile,
                    "{context}"
                );
                assert_eq!(yaml_str(&build["target"]), source.target, "{context}");
            }
            let env: BTreeMap<String, String> = service["environment"]
                .as_mapping()
                .unwrap_or_else(|| panic!("{context}: environment is a map"))
                .iter()
                .map(|(k, v)| (yaml_str(k), yaml_str(v)))
                .collect();
            for name in env.keys() {
                check_env_name(name, &known, &defaults, &context);
            }
            assert_eq!(env["NATS_URL"], "nats://nats:4222", "{context}");
            let profile = env["QWEN3_EMBED_PROFILE"].clone();
            let volumes = service["volumes"].as_sequence().expect("volumes");
            let target_of = |target: &str| {
                volumes
                    .iter()
                    .find(|v| v["target"].as_str() == Some(target))
                    .unwrap_or_else(|| panic!("{context}: nothing mounted at {target}"))
            };
            // Its own NATS identity, and that role's seed from the nats-auth volume.
            let role = expected_role(&source.binary, &strings(&service["command"]));
            assert_eq!(
                env.get(IDENTITY_ENV).map(String::as_str),
                Some(role),
                "{context}: NATS identity"
            );
            let seed = &env[NKEY_FILE_ENV];
            let (seed_dir, seed_file) = seed.rsplit_once('/').expect("a seed path");
            assert_eq!(seed_file, format!("{role}.nk"), "{context}: seed");
            let seeds = target_of(seed_dir);
            assert_eq!(yaml_str(&seeds["source"]), NATS_AUTH_SERVICE, "{context}");
            assert_eq!(seeds["read_only"].as_bool(), Some(true), "{context}");
            let config = target_of(&env["QWEN3_EMBED_CONFIG_DIR"]);
            assert_eq!(yaml_str(&config["source"]), "./config", "{context}");
            assert_eq!(config["read_only"].as_bool(), Some(true), "{context}");
            assert!(
                repo_root()
                    .join("deploy/config")
                    .join(format!("{profile}.toml"))
                    .exists(),
                "{context}: profile {profile}"
            );
            let args = strings(&service["command"]);
            match source.binary.as_str() {
                "gateway" => {
                    let ports = strings(&service["ports"]);
                    assert!(
                        ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
                        "{context}: ports {ports:?} do not publish {port}"
                    );
                }
                binary => {
                    // Workers read the model from /models/model (the images' QWEN3_EMBED_MODEL_DIR).
                    let model = target_of("/models/model");
                    assert_eq!(model["read_only"].as_bool(), Some(true), "{context}");
                    let replicas = service["deploy"]["replicas"].as_u64().unwrap_or(1);
                    if binary == "tokenizer-worker" {
                        tokenizer_batch =
                            effective(&env, &profile, "tokenizer", "max_batch_tokens");
                    } else if repository.ends_with("-cuda") {
                        let devices = &service["deploy"]["resources"]["reservations"]["devices"];
                        assert!(
                            devices
                                .as_sequence()
                                .is_some_and(|d| d.iter().any(|d| d["driver"] == "nvidia")),
                            "{context}: no nvidia GPU reservation"
                        );
                        let device =
                            device_arg(&args).unwrap_or_else(|| panic!("{context}: --device"));
                        let fraction = effective(&env, &profile, "gpu", "gpu_memory_fraction");
                        for _ in 0..replicas {
                            gpu_devices.push((device, fraction));
                        }
                        gpu_batches.push(effective(&env, &profile, "gpu", "max_batch_tokens"));
                    } else {
                        gpu_batches.push(effective(&env, &profile, "gpu", "max_batch_tokens"));
                    }
                }
            }
        }
        assert!(tokenizer_batch > 0.0, "{file}: no tokenizer worker");
        assert!(!gpu_batches.is_empty(), "{file}: no GPU worker");
        for batch in &gpu_batches {
            assert!(
                *batch >= tokenizer_batch,
                "{file}: GPU workers accept {batch}-token batches, tokenizers send {tokenizer_batch}"
            );
        }
        // Memory shares of the workers on one card must fit it.
        let mut per_card: BTreeMap<u64, f64> = BTreeMap::new();
        for (device, fraction) in &gpu_devices {
            *per_card.entry(*device).or_default() += fraction;
        }
        for (device, total) in &per_card {
            assert!(
                *total <= 1.0,
                "{file}: GPU {device} is given {total} of its memory"
            );
        }
        match file.as_str() {
            "compose.yaml" => {
                assert_eq!(gpu_devices, vec![(0, 0.45), (0, 0.45)], "{file}");
            }
            "compose.multi-gpu.yaml" => {
                assert!(gpu_devices.len() >= 2, "{file}");
                assert_eq!(
                    per_card.len(),
                    gpu_devices.len(),
                    "{file}: one worker per GPU"
                );
            }
            "compose.high-load.yaml" => {
                assert!(
                    per_card.len() >= 2 && gpu_devices.len() > per_card.len(),
                    "{file}"
                );
            }
            _ => {}
        }
    }
}

/// The compose service (and volume) that writes the NATS identities.
const NATS_AUTH_SERVICE: &str = "nats-auth";

/// The settings naming a process's NATS identity and its seed file.
const IDENTITY_ENV: &str = "QWEN3_EMBED__NATS__IDENTITY";
/// See [`IDENTITY_ENV`].
const NKEY_FILE_ENV: &str = "QWEN3_EMBED__NATS__NKEY_FILE";

/// The `nats-auth` role of a process running `binary` with `args`.
fn expected_role(binary: &str, args: &[String]) -> &'static str {
    let rerank = args
        .windows(2)
        .any(|w| w[0] == "--task" && w[1] == "rerank");
    match (binary, rerank) {
        ("gateway", _) => "gateway",
        ("tokenizer-worker", false) => "tokenizer",
        ("tokenizer-worker", true) => "rerank-tokenizer",
        ("gpu-worker", false) => "gpu",
        ("gpu-worker", true) => "rerank-gpu",
        _ => panic!("no role for {binary} {args:?}"),
    }
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
    };
    embed_jsonl::nats_auth::generate(&settings).expect("nats-auth writes the credentials");
    let conf = read(dir.join(embed_jsonl::nats_auth::AUTH_CONF));
    std::fs::remove_dir_all(&dir).unwrap();
    conf
}

/// A compose file's nats-server admits only the users of the one-shot `nats-auth` service:
/// the shipped server configuration includes the auth.conf it writes into their shared
/// volume, and the server starts after it.
fn check_compose_nats_auth(doc: &Value, images: &BTreeMap<String, ImageSource>, file: &str) {
    let auth = &doc["services"][NATS_AUTH_SERVICE];
    let image = yaml_str(&auth["image"]);
    assert_eq!(
        images[image_repository(&image)].binary,
        "nats-auth",
        "{file}: the {NATS_AUTH_SERVICE} service runs nats-auth"
    );
    assert!(
        strings(&auth["volumes"])
            .iter()
            .any(|v| v.starts_with(&format!("{NATS_AUTH_SERVICE}:/"))),
        "{file}: nats-auth writes into the {NATS_AUTH_SERVICE} volume"
    );
    assert!(doc["volumes"].get(NATS_AUTH_SERVICE).is_some(), "{file}");
    let nats = &doc["services"]["nats"];
    assert_eq!(
        nats["depends_on"][NATS_AUTH_SERVICE]["condition"], "service_completed_successfully",
        "{file}: nats starts once the credentials are written"
    );
    let args = strings(&nats["command"]);
    let config = args
        .windows(2)
        .find(|w| w[0] == "--config" || w[0] == "-c")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| panic!("{file}: nats runs no configuration file"));
    let volumes = strings(&nats["volumes"]);
    let mounted_from = |target: &str| {
        volumes
            .iter()
            .find_map(|v| {
                let mut parts = v.split(':');
                let (source, at) = (parts.next()?, parts.next()?);
                (at == target).then(|| source.to_string())
            })
            .unwrap_or_else(|| panic!("{file}: nothing mounted at {target} in nats"))
    };
    let source = mounted_from(&config);
    let shipped = read(Path::new("deploy").join(&source));
    let include = shipped
        .lines()
        .find_map(|l| l.trim().strip_prefix("include "))
        .map(|i| i.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("{file}: {source} includes no auth.conf"));
    let config_dir = config.rsplit_once('/').unwrap().0;
    let (include_dir, include_file) = include.rsplit_once('/').unwrap();
    assert_eq!(include_file, embed_jsonl::nats_auth::AUTH_CONF, "{file}");
    assert_eq!(
        mounted_from(&format!("{config_dir}/{include_dir}")),
        NATS_AUTH_SERVICE,
        "{file}: the included auth.conf comes from the {NATS_AUTH_SERVICE} volume"
    );
}

// ---------------------------------------------------------------------------------------
// Kubernetes.
// ---------------------------------------------------------------------------------------

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
        deployments.insert(
            (source.binary.clone(), task.to_string()),
            (name, labels.clone()),
        );
    }
    let deployment = |binary: &str, task: &str| {
        deployments
            .get(&(binary.to_string(), task.to_string()))
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

    // KEDA scales each task's GPU workers on the code's stream and consumer of that task.
    for task in [Task::Embed, Task::Rerank] {
        let (stream, consumer) = stream_and_consumer(task);
        let (gpu, _) = deployment("gpu-worker", task.as_str());
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
            shipped_subjects().lane_stream(task, Priority::Bulk),
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

    // The HPA scales the tokenizer workers on CPU.
    let (tokenizer, _) = deployment("tokenizer-worker", "embed");
    let hpa = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "HorizontalPodAutoscaler")
        .expect("an HPA");
    assert_eq!(
        &hpa["spec"]["scaleTargetRef"]["name"],
        &Value::from(tokenizer.as_str())
    );
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");

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

    // Kustomize lists every manifest and only images the Dockerfiles build.
    let kustomization = find_kustomization(&docs);
    let resources = strings(&kustomization["resources"]);
    for (file, doc) in &docs {
        if doc.get("kind").is_some() && doc["kind"] != "Kustomization" {
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

// ---------------------------------------------------------------------------------------
// systemd.
// ---------------------------------------------------------------------------------------

#[test]
fn systemd_units_run_the_binaries_hardened_with_a_drain() {
    let known = sources_and_config_doc();
    let defaults = default_toml();
    let dir = repo_root().join("deploy/systemd");
    let mut env_files = BTreeSet::new();
    let mut units = BTreeMap::new();
    for path in files_under(&dir, &|p| p.extension().is_some_and(|e| e == "service")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.starts_with('[') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                keys.entry(k.to_string()).or_default().push(v.to_string());
            }
        }
        let one = |k: &str| {
            keys.get(k)
                .and_then(|v| v.last())
                .cloned()
                .unwrap_or_else(|| panic!("{name}: no {k}="))
        };
        assert_eq!(one("Restart"), "on-failure", "{name}");
        assert_eq!(one("KillSignal"), "SIGTERM", "{name}");
        assert_eq!(one("NoNewPrivileges"), "yes", "{name}");
        assert_eq!(one("ProtectSystem"), "strict", "{name}");
        let user = one("User");
        assert!(user != "root" && !user.is_empty(), "{name}: User={user}");
        let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
        assert!(
            stop >= 30,
            "{name}: TimeoutStopSec={stop} leaves no time to drain"
        );
        env_files.insert(one("EnvironmentFile"));
        for assignment in keys.get("Environment").into_iter().flatten() {
            let var = assignment.split('=').next().unwrap();
            check_env_name(var, &known, &defaults, &name);
        }
        let exec = one("ExecStart");
        let binary = exec
            .split_whitespace()
            .next()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        units.insert(name, (binary.to_string(), exec));
    }
    let unit = |n: &str| {
        units
            .get(n)
            .unwrap_or_else(|| panic!("no deploy/systemd/{n}"))
    };
    assert_eq!(unit("qwen3-embed-gateway.service").0, "gateway");
    assert_eq!(
        unit("qwen3-embed-tokenizer-worker@.service").0,
        "tokenizer-worker"
    );
    let (binary, exec) = unit("qwen3-embed-gpu-worker@.service");
    assert_eq!(binary, "gpu-worker");
    assert!(
        exec.contains("--device %i"),
        "the instance is the device index"
    );
    // The shipped EnvironmentFile example names only variables the binaries read.
    assert_eq!(env_files.len(), 1, "{env_files:?}");
    let example = env_files
        .first()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    for line in read(format!("deploy/systemd/{example}")).lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let var = line.split('=').next().unwrap();
        check_env_name(var, &known, &defaults, &example);
    }
}

// ---------------------------------------------------------------------------------------
// Grafana and the operations guide.
// ---------------------------------------------------------------------------------------

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

#[test]
fn operations_guide_covers_layouts_metrics_and_images() {
    let guide = read("docs/operations.md");
    for needle in [
        "compose.yaml",
        "compose.multi-gpu.yaml",
        "compose.high-load.yaml",
        "gpu_memory_fraction",
        "max_batch_tokens",
        "request_timeout_s",
        "deploy/containers/cpu.Dockerfile",
        "deploy/containers/cuda.Dockerfile",
        ".dockerignore",
        "--device",
    ] {
        assert!(
            guide.contains(needle),
            "docs/operations.md does not mention {needle}"
        );
    }
    for metric in gateway_metrics().keys() {
        assert!(
            guide.contains(metric.as_str()),
            "docs/operations.md does not explain {metric}"
        );
    }
}
