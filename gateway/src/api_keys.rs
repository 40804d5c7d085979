//! API keys: the bearer tokens clients present in `Authorization: Bearer <key>`.
//!
//! Keys come from `[gateway] api_keys_file` (one per line) and from the environment
//! variable [`API_KEYS_ENV`] (comma-separated). Only their SHA-256 digests are kept: the
//! plain keys never stay in memory past loading, so they cannot reach logs, `/debug` or
//! `Debug` output. A presented key is hashed and compared with every configured digest in
//! constant time, so the answer time says nothing about how much of a key matched.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Environment variable the gateway binary reads keys from (comma-separated).
pub const API_KEYS_ENV: &str = "QWEN3_EMBED_API_KEYS";

/// A SHA-256 digest of one key.
type KeyDigest = [u8; 32];

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeysError {
    /// The keys file could not be read.
    #[error("cannot read the API keys file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A key source is configured but holds no key.
    #[error("{0} is configured but holds no API key")]
    Empty(String),
}

/// The configured API keys, as digests; empty means authentication is off.
///
/// `Debug` shows only how many keys there are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    /// SHA-256 of every configured key.
    digests: Vec<KeyDigest>,
}

impl ApiKeys {
    /// Keys from a comma-separated list (the [`API_KEYS_ENV`] form); blanks are skipped.
    /// `source` names the list in the error when it holds no key.
    pub fn from_list(list: &str, source: &str) -> Result<Self, ApiKeysError> {
        Self::non_empty(list.split(','), source)
    }

    /// Keys from the text of a keys file: one key per line; blank lines and lines starting
    /// with `#` are skipped.
    pub fn from_file_text(text: &str, source: &str) -> Result<Self, ApiKeysError> {
        Self::non_empty(
            text.lines()
                .filter(|line| !line.trim_start().starts_with('#')),
            source,
        )
    }

    /// Keys from a keys file (see [`Self::from_file_text`]).
    pub fn from_file(path: &Path) -> Result<Self, ApiKeysError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ApiKeysError::Read {
            path: source.clone(),
            source: error,
        })?;
        Self::from_file_text(&text, &source)
    }

    /// Hashes every non-blank key; an error when none is left.
    fn non_empty<'a>(
        keys: impl Iterator<Item = &'a str>,
        source: &str,
    ) -> Result<Self, ApiKeysError> {
        let digests: Vec<KeyDigest> = keys
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(digest)
            .collect();
        if digests.is_empty() {
            return Err(ApiKeysError::Empty(source.to_string()));
        }
        Ok(Self { digests })
    }

    /// These keys and `other`'s together.
    pub fn merged(mut self, other: Self) -> Self {
        for digest in other.digests {
            if !self.digests.contains(&digest) {
                self.digests.push(digest);
            }
        }
        self
    }

    /// Number of distinct keys configured.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether no key is configured (authentication is off).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys. Every configured digest is compared, each in
    /// constant time, without stopping at a match.
    pub fn verify(&self, presented: &str) -> bool {
        let presented = digest(presented);
        let mut matched = 0u8;
        for configured in &self.digests {
            matched |= u8::from(constant_time_eq(configured, &presented));
        }
        matched == 1
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} redacted)", self.digests.len())
    }
}

fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares two digests touching every byte whatever they hold.
fn constant_time_eq(a: &KeyDigest, b: &KeyDigest) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keys_verify_and_others_do_not() {
        let keys = ApiKeys::from_list(" sk-one, ,sk-two ", "env").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.verify("sk-one"));
        assert!(keys.verify("sk-two"));
        assert!(!keys.verify("sk-three"));
        assert!(!keys.verify(""));
        assert!(!keys.verify("sk-one,sk-two"));
    }

    #[test]
    fn file_text_skips_comments_and_blank_lines() {
        let text = "# production keys\n\nsk-file-one\n   # rotated 2024\n  sk-file-two  \n";
        let keys = ApiKeys::from_file_text(text, "keys.txt").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.verify("sk-file-one"));
        assert!(keys.verify("sk-file-two"));
        assert!(!keys.verify("# production keys"));
    }

    #[test]
    fn sources_without_keys_are_errors() {
        assert!(matches!(
            ApiKeys::from_file_text("# nothing\n\n", "keys.txt"),
            Err(ApiKeysError::Empty(_))
        ));
        assert!(ApiKeys::from_list(" , ", "env").is_err());
        let missing = ApiKeys::from_file(Path::new("/nonexistent/qwen3-embed-keys"));
        assert!(matches!(missing, Err(ApiKeysError::Read { .. })));
    }

    #[test]
    fn merging_counts_each_key_once() {
        let a = ApiKeys::from_list("k1,k2", "a").unwrap();
        let b = ApiKeys::from_list("k2,k3", "b").unwrap();
        let all = a.merged(b);
        assert_eq!(all.len(), 3);
        assert!(all.verify("k3"));
        assert!(ApiKeys::default().is_empty());
        assert!(!ApiKeys::default().verify("k1"));
    }

    #[test]
    fn debug_shows_only_the_count() {
        let keys = ApiKeys::from_list("sk-very-secret", "env").unwrap();
        let shown = format!("{keys:?}");
        assert_eq!(shown, "ApiKeys(1 redacted)");
        assert!(!shown.contains("secret"));
    }
}
