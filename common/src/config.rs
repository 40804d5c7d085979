//! Layered configuration: `default.toml`, then a profile (`dev.toml`, `production.toml`), then
//! environment variables, read with the `config` crate into each binary's typed struct.
//!
//! Environment variables are `QWEN3_EMBED__{SECTION}__{KEY}` (double underscores), e.g.
//! `QWEN3_EMBED__GATEWAY__PORT=8080`. Command-line flags are applied by each binary after
//! loading, so they win over everything.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "QWEN3_EMBED";

/// Where configuration files are read from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigSource {
    /// Directory holding `default.toml` and the profile files (`deploy/config` in the repo).
    /// Without it, only built-in defaults and the environment apply.
    #[arg(long, env = "QWEN3_EMBED_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Profile layered over `default.toml`: `dev`, `production`, or any `NAME` with a
    /// `NAME.toml` in the config directory.
    #[arg(long, env = "QWEN3_EMBED_PROFILE")]
    pub profile: Option<String>,
}

/// A configuration file or value could not be read.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

impl ConfigSource {
    /// Reads section `section` (e.g. `gateway`) into `T`; fields missing everywhere take
    /// `T`'s serde defaults.
    pub fn load<T: DeserializeOwned>(&self, section: &str) -> Result<T, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(dir) = &self.config_dir {
            builder = builder.add_source(file(dir, "default", true)?);
            if let Some(profile) = &self.profile {
                builder = builder.add_source(file(dir, profile, true)?);
            }
        } else if let Some(profile) = &self.profile {
            return Err(ConfigError(format!(
                "profile `{profile}` given without a config directory (--config-dir)"
            )));
        }
        let settings = builder
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .separator("__")
                    .prefix_separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(|e| ConfigError(e.to_string()))?;
        match settings.get::<T>(section) {
            Ok(value) => Ok(value),
            Err(config::ConfigError::NotFound(_)) => config::Config::builder()
                .build()
                .and_then(|empty| empty.try_deserialize::<T>())
                .map_err(|e| ConfigError(format!("[{section}]: {e}"))),
            Err(e) => Err(ConfigError(explain::<T>(&settings, section, &e))),
        }
    }
}

/// The message of a section that does not deserialize, naming the key at fault: the
/// `config` crate names only the section, so the section is deserialized again through
/// `serde_path_to_error` for the key's path.
fn explain<T: DeserializeOwned>(
    settings: &config::Config,
    section: &str,
    error: &config::ConfigError,
) -> String {
    let plain = format!("[{section}]: {error}");
    let Ok(value) = settings.get::<config::Value>(section) else {
        return plain;
    };
    let Err(located) = serde_path_to_error::deserialize::<_, T>(value) else {
        return plain;
    };
    let path = located.path().to_string();
    let message = located.inner().to_string();
    let message = message
        .strip_suffix(&format!(" for key `{path}`"))
        .unwrap_or(&message);
    let message =
        enum_message::<T>(settings, section, &path, message).unwrap_or_else(|| message.to_string());
    format!("[{section}] {path}: {message}")
}

/// For a value at `path` that names no variant of an enum, serde's message, which lists the
/// values allowed (the `config` crate's `message` does not), from the section read as JSON;
/// `None` for any other error, or when the JSON reading fails elsewhere (so it never points
/// at a key the `config` crate accepted).
fn enum_message<T: DeserializeOwned>(
    settings: &config::Config,
    section: &str,
    path: &str,
    message: &str,
) -> Option<String> {
    let variant = message
        .split("does not have variant constructor ")
        .nth(1)?
        .split(" for key")
        .next()?;
    let json = settings.get::<serde_json::Value>(section).ok()?;
    let error = serde_path_to_error::deserialize::<_, T>(json).err()?;
    let inner = error.inner().to_string();
    let same =
        error.path().to_string() == path && inner.contains(&format!("unknown variant `{variant}`"));
    same.then_some(inner)
}

fn file(
    dir: &Path,
    name: &str,
    required: bool,
) -> Result<config::File<config::FileSourceFile, config::FileFormat>, ConfigError> {
    let path = dir.join(format!("{name}.toml"));
    if required && !path.exists() {
        return Err(ConfigError(format!("{} does not exist", path.display())));
    }
    Ok(config::File::from(path)
        .format(config::FileFormat::Toml)
        .required(required))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Section {
        #[serde(default = "default_port")]
        port: u16,
        #[serde(default)]
        name: String,
    }

    fn default_port() -> u16 {
        4008
    }

    #[test]
    fn profile_overrides_default_and_missing_fields_take_defaults() {
        let dir = std::env::temp_dir().join(format!("qwen3-embed-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("default.toml"),
            "[svc]\nport = 1\nname = \"base\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("dev.toml"), "[svc]\nport = 2\n").unwrap();
        let source = ConfigSource {
            config_dir: Some(dir.clone()),
            profile: Some("dev".into()),
        };
        let section: Section = source.load("svc").unwrap();
        assert_eq!(
            section,
            Section {
                port: 2,
                name: "base".into()
            }
        );
        let absent: Section = source.load("other").unwrap();
        assert_eq!(absent.port, 4008);
        let missing = ConfigSource {
            config_dir: Some(dir.clone()),
            profile: Some("nope".into()),
        };
        assert!(
            missing
                .load::<Section>("svc")
                .unwrap_err()
                .to_string()
                .contains("nope.toml")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Alpha,
        Beta,
        Gamma,
    }

    #[derive(Debug, serde::Deserialize)]
    struct WithKind {
        #[serde(default)]
        #[allow(dead_code)]
        port: u16,
        #[allow(dead_code)]
        kind: Kind,
    }

    /// `default.toml` holding `text` in a fresh directory, as a source.
    fn source_with(text: &str, tag: &str) -> (ConfigSource, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("qwen3-embed-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("default.toml"), text).unwrap();
        let source = ConfigSource {
            config_dir: Some(dir.clone()),
            profile: None,
        };
        (source, dir)
    }

    #[test]
    fn an_unknown_enum_value_names_its_key_and_the_allowed_values() {
        let (source, dir) = source_with("[svc]\nport = 1\nkind = \"delta\"\n", "enum");
        let message = source.load::<WithKind>("svc").unwrap_err().to_string();
        assert_eq!(
            message,
            "configuration error: [svc] kind: unknown variant `delta`, expected one of `alpha`, \
             `beta`, `gamma`"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let (source, dir) = source_with("[svc]\nport = \"many\"\nkind = \"alpha\"\n", "type");
        let message = source.load::<WithKind>("svc").unwrap_err().to_string();
        assert!(
            message.starts_with("configuration error: [svc] port: invalid type: string \"many\""),
            "{message}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
