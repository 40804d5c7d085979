//! LRU cache of finished vectors (the seed's `lru_cache(maxsize=1000)`), shared by all
//! requests of one gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::wire::InputType;

use crate::upstream::assembly::Embedded;

/// Everything that decides a vector: the text and the options sent with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The text as sent.
    pub text: String,
    /// Query or document.
    pub input_type: InputType,
    /// The instruction as sent (`None`, meaning the worker's default, is its own key).
    pub instruction: Option<String>,
    /// Requested output size.
    pub dimensions: Option<u32>,
    /// Truncation as sent: a truncated vector must not answer a request that asked for an
    /// error on over-long input.
    pub truncate: Option<bool>,
}

/// The cache with its hit and miss counts; disabled when its size is 0.
pub struct VectorCache {
    /// The entries; `None` when disabled.
    entries: Option<moka::sync::Cache<CacheKey, Arc<Embedded>>>,
    /// Configured capacity, in entries.
    capacity: u64,
    /// Lookups that found a vector.
    hits: AtomicU64,
    /// Lookups that found none.
    misses: AtomicU64,
}

impl VectorCache {
    /// A cache holding at most `capacity` vectors (0 disables it).
    pub fn new(capacity: u64) -> Self {
        Self {
            entries: (capacity > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(capacity)
                    .eviction_policy(moka::policy::EvictionPolicy::lru())
                    .build()
            }),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Whether lookups can hit at all.
    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The cached vector for `key`, counting a hit or a miss.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Embedded>> {
        let entries = self.entries.as_ref()?;
        let found = entries.get(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores a finished vector.
    pub fn insert(&self, key: CacheKey, value: Arc<Embedded>) {
        if let Some(entries) = &self.entries {
            entries.insert(key, value);
        }
    }

    /// Vectors held now (approximate while evictions are pending).
    pub fn len(&self) -> u64 {
        self.entries.as_ref().map_or(0, |e| e.entry_count())
    }

    /// Whether no vector is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Configured capacity in entries.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Lookups that hit since start.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that missed since start.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str, instruction: Option<&str>) -> CacheKey {
        CacheKey {
            text: text.into(),
            input_type: InputType::Query,
            instruction: instruction.map(Into::into),
            dimensions: None,
            truncate: None,
        }
    }

    #[test]
    fn hits_only_for_the_same_options() {
        let cache = VectorCache::new(10);
        let value = Arc::new(Embedded {
            vector: vec![1.0],
            tokens: 2,
        });
        cache.insert(key("a", None), value.clone());
        assert_eq!(cache.get(&key("a", None)), Some(value));
        assert_eq!(cache.get(&key("a", Some("task"))), None);
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
    }

    #[test]
    fn size_zero_disables() {
        let cache = VectorCache::new(0);
        cache.insert(
            key("a", None),
            Arc::new(Embedded {
                vector: vec![],
                tokens: 0,
            }),
        );
        assert!(!cache.is_enabled());
        assert_eq!(cache.get(&key("a", None)), None);
        assert_eq!(cache.misses(), 0);
    }
}
