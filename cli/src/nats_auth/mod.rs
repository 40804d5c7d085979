//! `nats-auth`: NATS identities and permissions for a deployment. One NKey user per role
//! ([`roles`]) with subject allow lists, written as a nats-server configuration include
//! (`auth.conf`, [`conf`]) and one seed file per role (`<role>.nk`, mode 0600, in a
//! directory of mode 0700).
//!
//! Models served on subjects of their own (`[nats] model_subjects`) are named with
//! `--model` and `--rerank-model`: the roles of their task may also use those models'
//! subjects ([`RoutedModels`]).
//!
//! Seeds are kept: running the tool again reuses every seed it finds (adding the roles
//! that have none) and rewrites `auth.conf` from them, so it is safe to run on every
//! start. `--rotate ROLE` replaces that role's seed; nats-server then needs a reload and
//! the role's processes a restart (docs/operations.md, "Security").

pub mod conf;
pub mod roles;

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use common::subjects::{is_identity, model_token};
use nkeys::KeyPair;

pub use roles::{Role, RoutedModels, SERVICE_ROLES, roles};

/// The name of the configuration include in the output directory.
pub const AUTH_CONF: &str = "auth.conf";

/// The default external client identity.
pub const DEFAULT_CLIENT: &str = "client";

/// What to generate.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The output directory (created with mode 0700 when missing).
    pub out: PathBuf,
    /// The deployment's subject prefix (`[nats] subject_prefix`).
    pub prefix: String,
    /// External client identities.
    pub clients: Vec<String>,
    /// Roles whose seeds are replaced.
    pub rotate: Vec<String>,
    /// The models served on subjects of their own, beside the default ones.
    pub models: RoutedModels,
}

/// What became of a role's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedState {
    /// There was none: a new one was written.
    Created,
    /// The one on disk was kept.
    Kept,
    /// The one on disk was replaced (`--rotate`).
    Rotated,
}

/// One role's credentials as written.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The role (its identity).
    pub role: String,
    /// Its public NKey (`U...`), as `auth.conf` names it.
    pub public_key: String,
    /// Its seed file.
    pub seed_file: PathBuf,
    /// Whether its seed is new, kept or rotated.
    pub seed: SeedState,
}

/// Why nothing (or not everything) was generated.
#[derive(Debug, thiserror::Error)]
pub enum NatsAuthError {
    /// The subject prefix is not dot-separated subject tokens.
    #[error("prefix `{0}` must be dot-separated tokens of letters, digits, `-` or `_`")]
    Prefix(String),
    /// A client identity is not one subject token.
    #[error("client `{0}` must be 1 to 64 letters, digits, `-` or `_`")]
    Client(String),
    /// A client identity is a service role's, or given twice.
    #[error("client `{0}` is a service role's name or given twice; pick another")]
    DuplicateClient(String),
    /// A model name gives no subject token (it is empty).
    #[error("{0} `{1}`: a model name must not be empty")]
    Model(&'static str, String),
    /// `--rotate` names no role of this deployment.
    #[error("--rotate {0}: no such role (roles: {1})")]
    UnknownRole(String, String),
    /// A seed file on disk is not a user NKey seed.
    #[error("{path}: not a user NKey seed ({reason}); remove it or rotate the role")]
    BadSeed {
        /// The seed file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// Generates (or refreshes) the credentials of every role in `settings.out`: the seeds,
/// then `auth.conf` naming their public keys.
pub fn generate(settings: &Settings) -> Result<Vec<Generated>, NatsAuthError> {
    check(settings)?;
    let roles = roles(&settings.prefix, &settings.clients, &settings.models);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&settings.out)
        .map_err(|source| io(&settings.out, source))?;
    let mut generated = Vec::with_capacity(roles.len());
    let mut users = Vec::with_capacity(roles.len());
    for role in roles {
        let seed_file = settings.out.join(format!("{}.nk", role.name));
        let rotate = settings.rotate.contains(&role.name);
        let (keys, seed) = match (seed_file.exists(), rotate) {
            (true, false) => (read_seed(&seed_file)?, SeedState::Kept),
            (exists, _) => {
                let keys = KeyPair::new_user();
                write_seed(&seed_file, &keys)?;
                let state = if exists {
                    SeedState::Rotated
                } else {
                    SeedState::Created
                };
                (keys, state)
            }
        };
        let public_key = keys.public_key();
        generated.push(Generated {
            role: role.name.clone(),
            public_key: public_key.clone(),
            seed_file,
            seed,
        });
        users.push((role, public_key));
    }
    let conf = conf::render(&users, &settings.prefix);
    write_atomically(&settings.out.join(AUTH_CONF), conf.as_bytes(), 0o644)?;
    Ok(generated)
}

/// Refuses a bad prefix, empty model names, bad or colliding client names and unknown
/// roles to rotate.
fn check(settings: &Settings) -> Result<(), NatsAuthError> {
    if !settings.prefix.split('.').all(is_identity) {
        return Err(NatsAuthError::Prefix(settings.prefix.clone()));
    }
    if let Some((flag, name)) = settings
        .models
        .named()
        .find(|(_, name)| model_token(name).is_empty())
    {
        return Err(NatsAuthError::Model(flag, name.to_string()));
    }
    let mut names: Vec<&str> = SERVICE_ROLES.to_vec();
    for client in &settings.clients {
        if !is_identity(client) {
            return Err(NatsAuthError::Client(client.clone()));
        }
        if names.contains(&client.as_str()) {
            return Err(NatsAuthError::DuplicateClient(client.clone()));
        }
        names.push(client);
    }
    match settings
        .rotate
        .iter()
        .find(|r| !names.contains(&r.as_str()))
    {
        Some(unknown) => Err(NatsAuthError::UnknownRole(
            unknown.clone(),
            names.join(", "),
        )),
        None => Ok(()),
    }
}

/// The user key pair whose seed is the first non-empty line of `path`.
fn read_seed(path: &Path) -> Result<KeyPair, NatsAuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| io(path, source))?;
    let seed = text.lines().map(str::trim).find(|l| !l.is_empty());
    let bad = |reason: String| NatsAuthError::BadSeed {
        path: path.to_path_buf(),
        reason,
    };
    let seed = seed.ok_or_else(|| bad("empty".into()))?;
    if !seed.starts_with("SU") {
        return Err(bad("a user seed starts with SU".into()));
    }
    KeyPair::from_seed(seed).map_err(|e| bad(e.to_string()))
}

/// Writes the seed of `keys` to `path`, readable by its owner only.
fn write_seed(path: &Path, keys: &KeyPair) -> Result<(), NatsAuthError> {
    let seed = keys.seed().map_err(|e| NatsAuthError::BadSeed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomically(path, format!("{seed}\n").as_bytes(), 0o600)
}

/// Writes `bytes` to a new file beside `path` with `mode`, then renames it over `path`: a
/// reader sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), NatsAuthError> {
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(|source| io(&temporary, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io(&temporary, source))?;
    std::fs::rename(&temporary, path).map_err(|source| io(path, source))
}

/// An I/O failure on `path`.
fn io(path: &Path, source: std::io::Error) -> NatsAuthError {
    NatsAuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn settings(out: &Path) -> Settings {
        Settings {
            out: out.to_path_buf(),
            prefix: "embed".into(),
            clients: vec![DEFAULT_CLIENT.into()],
            rotate: vec![],
            models: RoutedModels::default(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nats-auth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn seeds_are_private_kept_and_rotated_only_when_asked() {
        let dir = temp_dir("keep").join("auth");
        let first = generate(&settings(&dir)).unwrap();
        assert_eq!(first.len(), SERVICE_ROLES.len() + 1);
        assert!(first.iter().all(|g| g.seed == SeedState::Created));
        assert_eq!(mode(&dir), 0o700);
        for g in &first {
            assert_eq!(mode(&g.seed_file), 0o600, "{}", g.role);
            assert!(g.public_key.starts_with('U'));
        }
        let conf = std::fs::read_to_string(dir.join(AUTH_CONF)).unwrap();
        assert!(first.iter().all(|g| conf.contains(&g.public_key)));

        let again = generate(&settings(&dir)).unwrap();
        for (a, b) in first.iter().zip(&again) {
            assert_eq!(
                (a.public_key.as_str(), b.seed),
                (b.public_key.as_str(), SeedState::Kept)
            );
        }

        let rotated = generate(&Settings {
            rotate: vec!["gpu".into()],
            ..settings(&dir)
        })
        .unwrap();
        for (a, b) in first.iter().zip(&rotated) {
            if a.role == "gpu" {
                assert_eq!(b.seed, SeedState::Rotated);
                assert_ne!(a.public_key, b.public_key);
            } else {
                assert_eq!(a.public_key, b.public_key);
            }
        }
        let conf = std::fs::read_to_string(dir.join(AUTH_CONF)).unwrap();
        let gpu = |g: &[Generated]| {
            g.iter()
                .find(|g| g.role == "gpu")
                .unwrap()
                .public_key
                .clone()
        };
        assert!(conf.contains(&gpu(&rotated)) && !conf.contains(&gpu(&first)));
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn bad_names_and_seeds_are_refused_with_the_reason() {
        let dir = temp_dir("bad");
        let refused = |s: Settings| generate(&s).unwrap_err().to_string();
        let base = settings(&dir);
        let with_prefix = Settings {
            prefix: "embed.>".into(),
            ..base.clone()
        };
        assert!(refused(with_prefix).contains("prefix"));
        let with_client = |c: &str| Settings {
            clients: vec![c.into()],
            ..base.clone()
        };
        assert!(refused(with_client("a.b")).contains("client `a.b`"));
        assert!(refused(with_client("gateway")).contains("service role"));
        let rotate = Settings {
            rotate: vec!["nobody".into()],
            ..base.clone()
        };
        assert!(refused(rotate).contains("--rotate nobody"));
        let unnamed = Settings {
            models: RoutedModels {
                embed: vec!["qwen3-big".into()],
                rerank: vec![String::new()],
            },
            ..base.clone()
        };
        assert_eq!(
            refused(unnamed),
            "--rerank-model ``: a model name must not be empty"
        );
        assert!(!dir.exists(), "nothing is written for refused settings");

        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gateway.nk"), "SOAOPERATORSEED\n").unwrap();
        assert!(refused(base.clone()).contains("gateway.nk: not a user NKey seed"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
