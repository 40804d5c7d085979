//! LRU cache of finished vectors (the seed's `lru_cache(maxsize=1000)`), shared by all
//! requests of one gateway.
//!
//! One mutex around a plain LRU map: every lookup and insert is a hash and a few pointer
//! moves, held for well under a microsecond. (A concurrent cache with background
//! housekeeping cost 8 to 11% of the gateway's CPU under constant churn: rehashing its
//! table and replaying its access logs.)

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use common::wire::{InputType, TruncationDirection};

use crate::upstream::assembly::Embedded;

/// Everything that decides a vector: the model, the text and the options sent with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The model's route (`None` for the default model): the same text under two models
    /// never shares an entry.
    pub route: Option<String>,
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
    /// Which end truncation keeps, as sent.
    pub truncation_direction: Option<TruncationDirection>,
    /// Normalization as sent: an unnormalized vector must not answer a normalized request.
    pub normalize: Option<bool>,
}

/// The cache with its hit and miss counts; disabled when its size is 0.
pub struct VectorCache {
    /// The entries; `None` when disabled.
    entries: Option<Mutex<LruCache<CacheKey, Arc<Embedded>>>>,
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
            entries: NonZeroUsize::new(usize::try_from(capacity).unwrap_or(usize::MAX))
                .map(|capacity| Mutex::new(LruCache::new(capacity))),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The entries, locked; `None` when disabled. A panic while the lock was held cannot
    /// leave the map inconsistent for its next user (each operation is one call), so
    /// poisoning is ignored.
    fn entries(&self) -> Option<MutexGuard<'_, LruCache<CacheKey, Arc<Embedded>>>> {
        let entries = self.entries.as_ref()?;
        Some(
            entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Whether lookups can hit at all.
    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The cached vector for `key`, counting a hit or a miss.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Embedded>> {
        let found = self.entries()?.get(key).cloned();
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
        if let Some(mut entries) = self.entries() {
            entries.put(key, value);
        }
    }

    /// Vectors held now.
    pub fn len(&self) -> u64 {
        self.entries().map_or(0, |entries| entries.len() as u64)
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
            route: None,
            text: text.into(),
            input_type: InputType::Query,
            instruction: instruction.map(Into::into),
            dimensions: None,
            truncate: None,
            truncation_direction: None,
            normalize: None,
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
        let raw = CacheKey {
            normalize: Some(false),
            ..key("a", None)
        };
        assert_eq!(
            cache.get(&raw),
            None,
            "a normalized vector for a raw request"
        );
        assert_eq!((cache.hits(), cache.misses()), (1, 2));
    }

    #[test]
    fn another_model_never_hits_the_defaults_vector() {
        let cache = VectorCache::new(10);
        let value = Arc::new(Embedded {
            vector: vec![1.0],
            tokens: 2,
        });
        cache.insert(key("a", None), value.clone());
        let routed = CacheKey {
            route: Some("acme-embedder".into()),
            ..key("a", None)
        };
        assert_eq!(cache.get(&routed), None);
        cache.insert(
            routed.clone(),
            Arc::new(Embedded {
                vector: vec![2.0],
                tokens: 2,
            }),
        );
        assert_eq!(cache.get(&key("a", None)), Some(value));
        assert_eq!(
            cache.get(&routed).map(|v| v.vector.clone()),
            Some(vec![2.0])
        );
    }

    #[test]
    fn the_least_recently_used_vector_goes_first() {
        let cache = VectorCache::new(2);
        let value = Arc::new(Embedded {
            vector: vec![1.0],
            tokens: 2,
        });
        cache.insert(key("a", None), value.clone());
        cache.insert(key("b", None), value.clone());
        assert!(
            cache.get(&key("a", None)).is_some(),
            "a is now the most recent"
        );
        cache.insert(key("c", None), value);
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get(&key("b", None)).is_none(),
            "b was the least recent"
        );
        assert!(cache.get(&key("a", None)).is_some());
        assert!(cache.get(&key("c", None)).is_some());
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
