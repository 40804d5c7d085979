//! Admission control: at most `max_concurrent_queries` embedding requests in flight; the
//! next one is refused at once (never queued), so overload shows as fast 429s rather than
//! growing latency.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The admission limit and the requests holding a place under it.
pub struct Admission {
    /// One permit per request allowed in flight.
    places: Arc<Semaphore>,
    /// The limit, for reporting.
    limit: usize,
}

/// A place held by an admitted request, given back on drop.
pub struct Admitted {
    /// The permit; released on drop.
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// At most `limit` requests at once.
    pub fn new(limit: usize) -> Self {
        Self {
            places: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A place for one request, or `None` when all are taken.
    pub fn try_admit(&self) -> Option<Admitted> {
        match self.places.clone().try_acquire_owned() {
            Ok(permit) => Some(Admitted { _permit: permit }),
            // The semaphore is never closed; both mean "no place".
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => None,
        }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Requests in flight now.
    pub fn active(&self) -> usize {
        self.limit.saturating_sub(self.places.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_the_limit_and_frees_on_drop() {
        let admission = Admission::new(2);
        let first = admission.try_admit();
        let second = admission.try_admit();
        assert!(first.is_some() && second.is_some());
        assert!(admission.try_admit().is_none());
        assert_eq!(admission.active(), 2);
        drop(first);
        assert_eq!(admission.active(), 1);
        assert!(admission.try_admit().is_some());
    }
}
