//! Acknowledgements: which requests asked for a [`QueuedReply`] and how many of their
//! sequences are not yet durably in the work queue. Pure bookkeeping, no I/O: the service
//! loop owns one [`Acks`] and sends the replies it returns.
//!
//! A request is registered once all its texts are tokenized and handed to the batcher; each
//! batch the work queue confirms counts its items off; when a request has none left, its
//! acknowledgement is due. A request answered with an error is forgotten (the error is its
//! final reply). The same request taken twice (a requester that published again) is
//! counted twice and acknowledged once both copies are queued.

use std::collections::HashMap;

use common::wire::{BatchItem, QueuedReply};

/// Identifies a request: its reply subject and its id (two requesters may reuse an id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// Where the request's replies go.
    pub reply_to: String,
    /// The requester's id.
    pub id: String,
}

impl RequestKey {
    /// The request a batch item belongs to.
    pub fn of(item: &BatchItem) -> Self {
        Self {
            reply_to: item.reply_to.clone(),
            id: item.request_id.clone(),
        }
    }
}

/// A request waiting for its sequences to be queued.
#[derive(Debug)]
struct Waiting {
    /// Sequences handed to the batcher and not yet confirmed by the work queue.
    unqueued: usize,
    /// Inputs of the request, reported in the acknowledgement.
    total: u32,
}

/// An acknowledgement to send.
#[derive(Debug, Clone, PartialEq)]
pub struct DueAck {
    /// The request's reply subject.
    pub reply_to: String,
    /// The request's bundle subject, when it named one.
    pub bundle_to: Option<String>,
    /// The acknowledgement.
    pub reply: QueuedReply,
}

/// Requests that asked for an acknowledgement and are not yet fully queued.
#[derive(Debug, Default)]
pub struct Acks {
    waiting: HashMap<RequestKey, Waiting>,
}

impl Acks {
    /// Registers `sequences` sequences of request `key` (of `total` inputs) as handed to the
    /// batcher; an acknowledgement is due once the work queue confirmed all of them.
    pub fn expect(&mut self, key: RequestKey, sequences: usize, total: u32) {
        if sequences == 0 {
            return;
        }
        self.waiting
            .entry(key)
            .or_insert(Waiting { unqueued: 0, total })
            .unqueued += sequences;
    }

    /// Counts off the items of a batch the work queue confirmed; returns the acknowledgement
    /// of every request now fully queued. Items of requests that did not ask (or were
    /// forgotten) are ignored.
    pub fn queued<'a>(&mut self, items: impl IntoIterator<Item = &'a BatchItem>) -> Vec<DueAck> {
        let mut due = Vec::new();
        for item in items {
            let key = RequestKey::of(item);
            let Some(waiting) = self.waiting.get_mut(&key) else {
                continue;
            };
            waiting.unqueued = waiting.unqueued.saturating_sub(1);
            if waiting.unqueued == 0 {
                let total = waiting.total;
                self.waiting.remove(&key);
                due.push(DueAck {
                    reply_to: key.reply_to,
                    bundle_to: item.bundle_to.clone(),
                    reply: QueuedReply {
                        id: key.id,
                        queued: total,
                    },
                });
            }
        }
        due
    }

    /// Drops a request that was answered with an error: no acknowledgement follows.
    pub fn forget(&mut self, key: &RequestKey) {
        self.waiting.remove(key);
    }

    /// Requests waiting for their acknowledgement.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no request waits for an acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, index: u32) -> BatchItem {
        BatchItem {
            request_id: id.into(),
            reply_to: format!("_INBOX.{id}"),
            index,
            total: 3,
            len: 2,
            dims: 0,
            deadline_ms: 0,
            budget_ms: 0,
            trace: None,
            bundle_to: None,
            ..Default::default()
        }
    }

    fn key(id: &str) -> RequestKey {
        RequestKey::of(&item(id, 0))
    }

    #[test]
    fn acknowledged_once_every_sequence_is_queued() {
        let mut acks = Acks::default();
        acks.expect(key("a"), 3, 3);
        assert!(acks.queued(&[item("a", 0), item("a", 2)]).is_empty());
        let due = acks.queued(&[item("a", 1)]);
        assert_eq!(
            due,
            vec![DueAck {
                reply_to: "_INBOX.a".to_string(),
                bundle_to: None,
                reply: QueuedReply {
                    id: "a".into(),
                    queued: 3
                }
            }]
        );
        assert!(acks.is_empty());
        // A late duplicate of a finished request is ignored.
        assert!(acks.queued(&[item("a", 1)]).is_empty());
    }

    #[test]
    fn requests_are_counted_apart_and_unasked_items_ignored() {
        let mut acks = Acks::default();
        acks.expect(key("a"), 1, 1);
        acks.expect(key("b"), 2, 2);
        let due = acks.queued(&[item("b", 0), item("c", 0), item("a", 0)]);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].reply.id, "a");
        assert_eq!(acks.len(), 1);
        let mut other_inbox = item("b", 1);
        other_inbox.reply_to = "_INBOX.elsewhere".into();
        assert!(
            acks.queued(&[other_inbox]).is_empty(),
            "same id, other requester"
        );
        assert_eq!(acks.queued(&[item("b", 1)]).len(), 1);
    }

    #[test]
    fn a_request_taken_twice_is_acknowledged_after_both_copies() {
        let mut acks = Acks::default();
        acks.expect(key("a"), 1, 1);
        acks.expect(key("a"), 1, 1);
        assert!(acks.queued(&[item("a", 0)]).is_empty());
        assert_eq!(acks.queued(&[item("a", 0)]).len(), 1);
    }

    #[test]
    fn forgotten_requests_are_never_acknowledged() {
        let mut acks = Acks::default();
        acks.expect(key("a"), 2, 2);
        acks.forget(&key("a"));
        assert!(acks.queued(&[item("a", 0), item("a", 1)]).is_empty());
        acks.expect(key("z"), 0, 0);
        assert!(acks.is_empty(), "nothing to wait for");
    }
}
