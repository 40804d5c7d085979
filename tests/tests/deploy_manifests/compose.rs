//! The compose files (deploy/compose*.yaml): images, environment, mounts, NATS identities and
//! GPU memory shares agree with the code and the shipped configuration.

use std::collections::BTreeMap;
use std::path::Path;

use e2e_tests::repo_root;
use serde_yaml_ng::Value;

use super::containers::{ImageSource, dockerfile_images, image_repository};
use super::{
    IDENTITY_ENV, NKEY_FILE_ENV, check_env_name, default_toml, device_arg, expected_role,
    files_under, gateway_port, read, second_model, sources_and_config_doc, strings, yaml_file,
    yaml_str,
};

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
        second_model::check_compose(&doc, file);
        let mut gpu_devices = Vec::new();
        // Those of services outside every profile (what `up` starts by default).
        let mut default_devices = Vec::new();
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
                        let optional = !strings(&service["profiles"]).is_empty();
                        for _ in 0..replicas {
                            gpu_devices.push((device, fraction));
                            if !optional {
                                default_devices.push((device, fraction));
                            }
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
                // The seed's layout; a second model (its profile) on a card of its own.
                assert_eq!(default_devices, vec![(0, 0.45), (0, 0.45)], "{file}");
                assert!(per_card.len() == 2, "{file}: {gpu_devices:?}");
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
