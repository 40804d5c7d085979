//! Where a worker's model comes from: a local directory, or a Hugging Face id
//! (`Qwen/Qwen3-Embedding-0.6B`, optionally `@revision`) found in the standard Hugging Face
//! cache or, when the network is allowed, downloaded into it.
//!
//! The cache is the one `huggingface_hub` uses (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`; `models--org--name/snapshots/<commit>/` with
//! `refs/<revision>` naming the commit), so a model fetched by `hf download` or Python is
//! found here and the other way round. `HF_HUB_OFFLINE=1` forbids the network; `HF_ENDPOINT`
//! names another Hub (a mirror); `HF_TOKEN` (else the cache's `token` file) authenticates.
//! Only the files a worker reads are fetched ([`ModelFiles`]).

mod download;

use std::path::{Path, PathBuf};

use self::download::download;

/// What to do, said at the end of every message about an id that could not be had.
const WHAT_TO_DO: &str = "pass a local directory (Hugging Face layout) or allow the network";

/// The files a worker reads from its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFiles {
    /// A tokenizer worker's: `config.json` and `tokenizer.json`.
    Tokenizer,
    /// A GPU worker's: `config.json` and the safetensors weights (one file, or an index and
    /// its shards).
    Weights,
}

impl ModelFiles {
    /// Whether the repository file `name` is one of these.
    fn wants(self, name: &str) -> bool {
        match self {
            Self::Tokenizer => matches!(name, "config.json" | "tokenizer.json"),
            Self::Weights => {
                name == "config.json"
                    || name == "model.safetensors.index.json"
                    || (name.ends_with(".safetensors") && !name.contains('/'))
            }
        }
    }

    /// Whether `dir` holds every file these need (the shards its index names included).
    fn complete_in(self, dir: &Path) -> bool {
        if !dir.join("config.json").is_file() {
            return false;
        }
        match self {
            Self::Tokenizer => dir.join("tokenizer.json").is_file(),
            Self::Weights => {
                if dir.join("model.safetensors").is_file() {
                    return true;
                }
                let Ok(index) = std::fs::read(dir.join("model.safetensors.index.json")) else {
                    return false;
                };
                let Ok(index) = serde_json::from_slice::<serde_json::Value>(&index) else {
                    // Present but unreadable: the loader says what is wrong with it.
                    return true;
                };
                let shards = index["weight_map"].as_object().into_iter().flatten();
                shards
                    .filter_map(|(_, file)| file.as_str())
                    .all(|file| dir.join(file).is_file())
            }
        }
    }
}

/// A Hugging Face model id: `org/name`, optionally `@revision` (a branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// The revision asked for; `main` when none was.
    pub revision: String,
}

impl HubId {
    /// `text` as an id, or `None` when it is not shaped like one (`org/name`, each part
    /// letters, digits, `-`, `_` or `.`, not starting with `.` or `-`).
    pub fn parse(text: &str) -> Option<Self> {
        let (repo, revision) = match text.split_once('@') {
            Some((repo, revision)) if !revision.is_empty() => (repo, revision),
            Some(_) => return None,
            None => (text, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        let part_ok = |part: &str| {
            !part.is_empty()
                && part.len() <= 96
                && !part.starts_with(['.', '-'])
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let revision_ok = revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        (part_ok(org) && part_ok(name) && revision_ok).then(|| Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The repository's folder in the cache: `models--org--name`.
    fn folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

/// The Hugging Face settings of the environment.
#[derive(Debug, Clone, Default)]
pub struct HubEnv {
    /// The cache directory (`HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`);
    /// `None` when none of them is set.
    pub cache: Option<PathBuf>,
    /// `HF_HUB_OFFLINE` is set (`1`, `true`, `yes` or `on`): never download.
    pub offline: bool,
    /// The Hub's URL (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// `HF_TOKEN`, when set.
    pub token: Option<String>,
}

impl HubEnv {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|home| Path::new(&home).join("hub")))
            .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache/huggingface/hub")));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            cache,
            offline,
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            token: var("HF_TOKEN"),
        }
    }
}

/// A model, ready to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The directory holding its files.
    pub dir: PathBuf,
    /// The Hugging Face id it was given as (`org/name`, without `@revision`); `None` for a
    /// local directory.
    pub hub_id: Option<String>,
}

impl ResolvedModel {
    /// The name to report for it when none was configured: its id, else the directory's
    /// name.
    pub fn default_name(&self) -> String {
        match &self.hub_id {
            Some(id) => id.clone(),
            None => self.dir.file_name().map_or_else(
                || self.dir.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
        }
    }
}

/// Why a model could not be had. Each message names the model and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModelSourceError {
    /// Neither a directory nor shaped like a Hugging Face id.
    #[error(
        "model {0} is not a directory, nor a Hugging Face id such as Qwen/Qwen3-Embedding-0.6B"
    )]
    NotFound(String),
    /// An id, but no cache directory could be named.
    #[error(
        "{0} is not a directory and no Hugging Face cache is known (set HF_HUB_CACHE or HF_HOME); {WHAT_TO_DO}"
    )]
    NoCache(String),
    /// Not in the cache, and `HF_HUB_OFFLINE` forbids downloading it.
    #[error(
        "{id} is not a directory, nor in the Hugging Face cache ({cache}), and HF_HUB_OFFLINE is set, so it cannot be downloaded: {WHAT_TO_DO}"
    )]
    Offline {
        /// The id.
        id: String,
        /// The cache searched.
        cache: String,
    },
    /// Not in the cache, and the Hub did not answer.
    #[error(
        "{id} is not a directory, nor in the Hugging Face cache ({cache}), and the Hub at {endpoint} cannot be reached ({cause}): {WHAT_TO_DO}"
    )]
    Unreachable {
        /// The id.
        id: String,
        /// The cache searched.
        cache: String,
        /// The Hub's URL.
        endpoint: String,
        /// What the connection attempt said.
        cause: String,
    },
    /// The Hub has no such model, or refuses it to us.
    #[error(
        "the Hugging Face Hub at {endpoint} has no model {id} (HTTP {status}; a private or gated model needs HF_TOKEN): check the id, or pass a local directory"
    )]
    NoSuchModel {
        /// The id.
        id: String,
        /// The Hub's URL.
        endpoint: String,
        /// The HTTP status it answered.
        status: u16,
    },
    /// The download started but failed (disk full, permissions, a dropped connection).
    #[error("cannot download {id} into {cache}: {cause}")]
    Download {
        /// The id.
        id: String,
        /// The cache written to.
        cache: String,
        /// What failed.
        cause: String,
    },
}

/// Resolves the configured `model` for a worker reading `files`: an existing directory is
/// itself; a Hugging Face id is its cached snapshot, downloaded first when it is not cached
/// (or lacks some of `files`) and `env` allows the network. Logs what it does.
pub async fn resolve(
    model: &Path,
    files: ModelFiles,
    env: &HubEnv,
) -> Result<ResolvedModel, ModelSourceError> {
    if model.is_dir() {
        return Ok(ResolvedModel {
            dir: model.to_path_buf(),
            hub_id: None,
        });
    }
    let text = model.to_string_lossy();
    let Some(id) = HubId::parse(&text) else {
        return Err(ModelSourceError::NotFound(text.into_owned()));
    };
    let Some(cache) = env.cache.clone() else {
        return Err(ModelSourceError::NoCache(text.into_owned()));
    };
    let resolved = |dir: PathBuf| ResolvedModel {
        dir,
        hub_id: Some(id.repo.clone()),
    };
    if let Some(dir) = cached_snapshot(&cache, &id).filter(|dir| files.complete_in(dir)) {
        tracing::info!(model = %id.repo, dir = %dir.display(), "model found in the Hugging Face cache");
        return Ok(resolved(dir));
    }
    if env.offline {
        return Err(ModelSourceError::Offline {
            id: id.repo,
            cache: cache.display().to_string(),
        });
    }
    download(&id, files, &cache, env).await.map(resolved)
}

/// The snapshot directory `id` names in `cache`, when there is one: the commit in
/// `refs/<revision>`, or the revision itself when it is a commit held there.
fn cached_snapshot(cache: &Path, id: &HubId) -> Option<PathBuf> {
    let repo = cache.join(id.folder());
    let commit = std::fs::read_to_string(repo.join("refs").join(&id.revision))
        .map(|commit| commit.trim().to_string())
        .unwrap_or_else(|_| id.revision.clone());
    let dir = repo.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_org_slash_name_with_an_optional_revision() {
        let id = HubId::parse("Qwen/Qwen3-Embedding-0.6B").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("Qwen/Qwen3-Embedding-0.6B", "main")
        );
        assert_eq!(id.folder(), "models--Qwen--Qwen3-Embedding-0.6B");
        let pinned = HubId::parse("Qwen/Qwen3-Embedding-0.6B@v1.0").unwrap();
        assert_eq!(pinned.revision, "v1.0");
        for not_an_id in [
            "Qwen3-Embedding-0.6B",
            "/models/qwen",
            "./models/qwen",
            "a/b/c",
            "../x",
            "Qwen/",
            "Qwen/x@",
            "Qwen/x y",
        ] {
            assert_eq!(HubId::parse(not_an_id), None, "{not_an_id}");
        }
    }

    #[test]
    fn each_worker_fetches_only_what_it_reads() {
        use ModelFiles::{Tokenizer, Weights};
        assert!(Tokenizer.wants("tokenizer.json") && Tokenizer.wants("config.json"));
        assert!(!Tokenizer.wants("model.safetensors"));
        for name in [
            "config.json",
            "model.safetensors",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
        ] {
            assert!(Weights.wants(name), "{name}");
        }
        for name in [
            "tokenizer.json",
            "onnx/model.safetensors",
            "README.md",
            "pytorch_model.bin",
        ] {
            assert!(!Weights.wants(name), "{name}");
        }
    }

    /// A fresh temporary directory.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("model-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_sharded_snapshot_is_complete_only_with_every_shard() {
        let dir = temp_dir("shards");
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("model-1.safetensors"), "").unwrap();
        assert!(!ModelFiles::Weights.complete_in(&dir));
        std::fs::write(dir.join("model-2.safetensors"), "").unwrap();
        assert!(ModelFiles::Weights.complete_in(&dir));
        assert!(
            !ModelFiles::Tokenizer.complete_in(&dir),
            "no tokenizer.json"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn offline_and_uncached_says_what_to_do_and_a_cached_ref_resolves() {
        let cache = temp_dir("cache");
        let env = HubEnv {
            cache: Some(cache.clone()),
            offline: true,
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
        };
        let model = Path::new("org/model");
        let error = resolve(model, ModelFiles::Tokenizer, &env)
            .await
            .unwrap_err();
        let message = error.to_string();
        for needle in [
            "org/model",
            cache.to_str().unwrap(),
            "HF_HUB_OFFLINE",
            "pass a local directory",
        ] {
            assert!(message.contains(needle), "{needle:?} missing in {message}");
        }
        let snapshot = cache.join("models--org--model/snapshots/abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(cache.join("models--org--model/refs")).unwrap();
        std::fs::write(cache.join("models--org--model/refs/main"), "abc123\n").unwrap();
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        std::fs::write(snapshot.join("tokenizer.json"), "{}").unwrap();
        let resolved = resolve(model, ModelFiles::Tokenizer, &env).await.unwrap();
        assert_eq!(resolved.dir, snapshot);
        assert_eq!(resolved.default_name(), "org/model");
        // The same snapshot by its commit; the weights are not there.
        let pinned = resolve(Path::new("org/model@abc123"), ModelFiles::Tokenizer, &env).await;
        assert_eq!(pinned.unwrap().dir, snapshot);
        assert!(resolve(model, ModelFiles::Weights, &env).await.is_err());
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[tokio::test]
    async fn a_directory_is_itself_and_anything_else_is_refused() {
        let env = HubEnv::default();
        let dir = temp_dir("local");
        let resolved = resolve(&dir, ModelFiles::Weights, &env).await.unwrap();
        assert_eq!(
            (resolved.dir.as_path(), resolved.hub_id),
            (dir.as_path(), None)
        );
        let error = resolve(Path::new("/no/such/model/dir"), ModelFiles::Weights, &env).await;
        assert!(
            matches!(error, Err(ModelSourceError::NotFound(_))),
            "{error:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
