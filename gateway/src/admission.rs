//! Admission control, as Ray Serve does it: at most `max_concurrent_queries` requests in
//! flight, then up to `max_queued_requests` waiting for a place in arrival order (FIFO);
//! beyond the queue a request is refused at once (429), so overload shows as fast refusals
//! rather than unbounded latency. A waiting request leaves the line when its deadline passes
//! (the wait counts against it) or when it is dropped because its client went away; either
//! way its place in the queue is free again at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The admission limits and the requests holding or waiting for a place.
pub struct Admission {
    /// One permit per request allowed in flight; tokio's semaphore hands released permits
    /// to its waiters in the order they began waiting, which makes the queue FIFO.
    places: Arc<Semaphore>,
    /// Requests allowed in flight at once.
    limit: usize,
    /// Requests allowed to wait for a place at once; 0 refuses at once when all are taken.
    queue_limit: usize,
    /// Requests waiting for a place now.
    queued: AtomicUsize,
    /// How long the last request that waited for its place waited, ms: the basis of the
    /// `Retry-After` estimate when the queue is full.
    last_wait_ms: AtomicU64,
}

/// A place held by an admitted request, given back on drop.
pub struct Admitted {
    /// The permit; released on drop.
    _permit: OwnedSemaphorePermit,
    /// How long the request waited in the queue for it (zero when a place was free).
    waited: Duration,
}

impl Admitted {
    /// How long the request waited for its place (zero when one was free at once): the
    /// admission wait of the per-stage metrics.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every place is taken and the queue is full.
    #[error(
        "all {limit} places are taken and {queue_limit} requests wait already; retry in {retry_after_s} s"
    )]
    QueueFull {
        /// Requests allowed in flight.
        limit: usize,
        /// Requests allowed to wait.
        queue_limit: usize,
        /// Seconds after which a retry is likely to find room (at least 1).
        retry_after_s: u64,
    },
    /// The request's deadline passed while it waited for a place.
    #[error("the deadline passed while waiting {waited:?} for a place")]
    DeadlinePassed {
        /// How long it waited.
        waited: Duration,
    },
}

/// A reserved place in the queue, given back on drop (a place found, the deadline passed,
/// or the waiting request dropped).
struct QueueSlot<'a> {
    /// The count this slot is part of.
    queued: &'a AtomicUsize,
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// At most `limit` requests at once, and at most `queue_limit` waiting for a place.
    pub fn new(limit: usize, queue_limit: usize) -> Self {
        Self {
            places: Arc::new(Semaphore::new(limit)),
            limit,
            queue_limit,
            queued: AtomicUsize::new(0),
            last_wait_ms: AtomicU64::new(0),
        }
    }

    /// A place for one request: at once when one is free, else after the requests queued
    /// before it, unless the queue is full (refused at once) or `deadline` passes first.
    /// Dropping the returned future while it waits gives its queue slot back.
    pub async fn admit(&self, deadline: Instant) -> Result<Admitted, Refused> {
        // A released permit goes to the waiters first, so this never overtakes the queue.
        if let Some(admitted) = self.free_place() {
            return Ok(admitted);
        }
        let Some(slot) = self.reserve_slot() else {
            // A place may have come free since the first try.
            if let Some(admitted) = self.free_place() {
                return Ok(admitted);
            }
            return Err(Refused::QueueFull {
                limit: self.limit,
                queue_limit: self.queue_limit,
                retry_after_s: self.retry_after_s(),
            });
        };
        let started = Instant::now();
        let acquired = tokio::time::timeout_at(deadline, self.places.clone().acquire_owned()).await;
        drop(slot);
        let waited = started.elapsed();
        match acquired {
            Ok(Ok(permit)) => {
                let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
                self.last_wait_ms.store(waited_ms, Ordering::Relaxed);
                Ok(Admitted {
                    _permit: permit,
                    waited,
                })
            }
            // The semaphore is never closed; treat it as a wait that found no place.
            Ok(Err(_)) | Err(_) => Err(Refused::DeadlinePassed { waited }),
        }
    }

    /// A place that is free now, if any, without queueing for one.
    fn free_place(&self) -> Option<Admitted> {
        let permit = self.places.clone().try_acquire_owned().ok()?;
        Some(Admitted {
            _permit: permit,
            waited: Duration::ZERO,
        })
    }

    /// One more request in the queue, unless it is full.
    fn reserve_slot(&self) -> Option<QueueSlot<'_>> {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.queue_limit).then_some(queued + 1)
            })
            .ok()
            .map(|_| QueueSlot {
                queued: &self.queued,
            })
    }

    /// Seconds a refused client should wait: how long the last queued request waited for
    /// its place (about the time the queue takes to move through), at least 1.
    fn retry_after_s(&self) -> u64 {
        self.last_wait_ms
            .load(Ordering::Relaxed)
            .div_ceil(1000)
            .max(1)
    }

    /// Requests allowed in flight.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Requests allowed to wait for a place.
    pub fn queue_limit(&self) -> usize {
        self.queue_limit
    }

    /// Requests in flight now.
    pub fn active(&self) -> usize {
        self.limit.saturating_sub(self.places.available_permits())
    }

    /// Requests waiting for a place now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::task::JoinHandle;

    use super::*;

    /// A deadline far enough away never to matter.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    /// Spawns a request that waits for a place (and gives it back as soon as it has it);
    /// returns when it is in the queue.
    async fn queue_waiter(admission: &Arc<Admission>) -> JoinHandle<Result<(), Refused>> {
        let queued = admission.queued();
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(later()).await.map(drop) })
        };
        while admission.queued() <= queued {
            tokio::task::yield_now().await;
        }
        waiting
    }

    #[tokio::test]
    async fn without_a_queue_refuses_beyond_the_limit_and_frees_on_drop() {
        let admission = Admission::new(2, 0);
        let first = admission.admit(later()).await.unwrap();
        let _second = admission.admit(later()).await.unwrap();
        let refused = admission.admit(later()).await.err().unwrap();
        assert_eq!(
            refused,
            Refused::QueueFull {
                limit: 2,
                queue_limit: 0,
                retry_after_s: 1
            }
        );
        assert_eq!((admission.active(), admission.queued()), (2, 0));
        drop(first);
        assert_eq!(admission.active(), 1);
        assert!(admission.admit(later()).await.is_ok());
    }

    #[tokio::test]
    async fn waiting_requests_get_places_in_arrival_order() {
        let admission = Arc::new(Admission::new(1, 3));
        let holder = admission.admit(later()).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for n in 0..3 {
            let (shared, order) = (admission.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let admitted = shared.admit(later()).await.unwrap();
                order.lock().unwrap().push(n);
                // Hold the place a while so the next one must wait for it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(admitted);
            }));
            // Let each waiter join the queue before the next is spawned.
            while admission.queued() < n + 1 {
                tokio::task::yield_now().await;
            }
        }
        // The queue is full: a fourth is refused at once.
        assert!(matches!(
            admission.admit(later()).await,
            Err(Refused::QueueFull { queue_limit: 3, .. })
        ));
        drop(holder);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!((admission.active(), admission.queued()), (0, 0));
    }

    #[tokio::test]
    async fn the_wait_ends_at_the_deadline() {
        let admission = Admission::new(1, 1);
        let _holder = admission.admit(later()).await.unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(250);
        let refused = admission.admit(deadline).await.err().unwrap();
        let Refused::DeadlinePassed { waited } = refused else {
            panic!("refused for another reason: {refused:?}");
        };
        assert!(Instant::now() >= deadline, "gave up early");
        assert!(waited < Duration::from_secs(2), "waited {waited:?}");
        assert_eq!(admission.queued(), 0, "the queue slot is given back");
        // A deadline already past is refused without waiting.
        let refused = admission.admit(started).await.err().unwrap();
        assert!(matches!(refused, Refused::DeadlinePassed { .. }));
    }

    #[tokio::test]
    async fn a_dropped_waiter_gives_its_place_back() {
        let admission = Arc::new(Admission::new(1, 1));
        let holder = admission.admit(later()).await.unwrap();
        let waiting = queue_waiter(&admission).await;
        // The queue is full until the waiter goes away (its client disconnected).
        assert!(admission.admit(later()).await.is_err());
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(admission.queued(), 0);
        // Its queue slot and the place it waited for are both free for the next request.
        let next = queue_waiter(&admission).await;
        drop(holder);
        next.await.unwrap().unwrap();
        assert_eq!((admission.active(), admission.queued()), (0, 0));
    }

    #[tokio::test]
    async fn an_admitted_request_knows_how_long_it_waited() {
        let admission = Arc::new(Admission::new(1, 1));
        let holder = admission.admit(later()).await.unwrap();
        assert_eq!(holder.waited(), Duration::ZERO, "a free place is no wait");
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(later()).await.map(|a| a.waited()) })
        };
        while admission.queued() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
        drop(holder);
        let waited = waiting.await.unwrap().unwrap();
        assert!(waited >= Duration::from_millis(100), "waited {waited:?}");
    }

    #[tokio::test]
    async fn retry_after_follows_the_last_wait() {
        let admission = Arc::new(Admission::new(1, 1));
        let holder = admission.admit(later()).await.unwrap();
        let waiting = queue_waiter(&admission).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        drop(holder);
        waiting.await.unwrap().unwrap();
        // Fill the place and the queue again: the refusal suggests the last wait (over 1.1 s),
        // rounded up.
        let _holder = admission.admit(later()).await.unwrap();
        let _waiting = queue_waiter(&admission).await;
        let refused = admission.admit(later()).await.err().unwrap();
        let Refused::QueueFull { retry_after_s, .. } = refused else {
            panic!("refused for another reason: {refused:?}");
        };
        assert!(retry_after_s >= 2, "retry after {retry_after_s} s");
    }
}
