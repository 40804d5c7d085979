//! The Dockerfiles of deploy/containers: each binary's image, built release and locked, run
//! as a numbered non-root user; the image names the compose files and manifests use.

use std::collections::BTreeMap;

use e2e_tests::repo_root;

use super::{files_under, gateway_port};

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
pub struct ImageSource {
    /// The Dockerfile, relative to the repository root.
    pub dockerfile: String,
    /// The build stage.
    pub target: String,
    /// The binary its ENTRYPOINT runs.
    pub binary: String,
}

/// Image name -> its Dockerfile and stage, from the `io.qwen3-embed.image` labels.
pub fn dockerfile_images() -> BTreeMap<String, ImageSource> {
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
pub fn image_repository(image: &str) -> &str {
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
