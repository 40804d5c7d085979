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

/// The message of a section that does not deserialize. For a value that names no variant of
/// an enum, the `config` crate says neither which key holds it nor which values are allowed;
/// serde does both, so the section is read again as JSON for its message (used only when it
/// finds the same value, so it never points at a key `config` accepted).
fn explain<T: DeserializeOwned>(
    settings: &config::Config,
    section: &str,
    error: &config::ConfigError,
) -> String {
    let plain = format!("[{section}]: {error}");
    let message = error.to_string();
    let Some(value) = message
        .split("does not have variant constructor ")
        .nth(1)
        .and_then(|rest| rest.split(" for key").next())
    else {
        return plain;
    };
    let Ok(json) = settings.get::<serde_json::Value>(section) else {
        return plain;
    };
    match serde_path_to_error::deserialize::<_, T>(json) {
        Err(e)
            if e.inner()
                .to_string()
                .contains(&format!("unknown variant `{value}`")) =>
        {
            format!("[{section}] {}: {}", e.path(), e.inner())
        }
        _ => plain,
    }
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
    fn other_errors_keep_the_config_crates_message() {
        let (source, dir) = source_with("[svc]\nport = \"many\"\nkind = \"alpha\"\n", "type");
        let message = source.load::<WithKind>("svc").unwrap_err().to_string();
        assert!(
            message.starts_with("configuration error: [svc]: "),
            "{message}"
        );
        assert!(message.contains("many"), "{message}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
