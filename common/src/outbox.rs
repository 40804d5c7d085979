//! Replies on their way out of a worker: each one alone on its request's reply subject, or,
//! for requests that named a `bundle_to` subject, packed with the others bound there into
//! [`ReplyBundle`](crate::wire::ReplyBundle) messages. Under load a GPU batch answers dozens
//! of requests from the same gateway; one bundle instead of a message each saves the NATS
//! server, and both clients, most of the per-message work. Pure: the caller publishes.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::wire;

/// The bytes a bundle adds around its replies: a one-entry map, the key `replies` and the
/// largest array header. A reply up to `max_payload - BUNDLE_OVERHEAD` always fits in a
/// bundle.
pub const BUNDLE_OVERHEAD: usize = 1 + 8 + 5;

/// Encoded replies collected by destination.
#[derive(Debug, Default)]
pub struct Outbox {
    /// `(reply subject, encoded reply)`, each sent as it is.
    alone: Vec<(String, Vec<u8>)>,
    /// Encoded replies by bundle subject, in the order they came.
    bundled: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Outbox {
    /// Adds one reply: to `bundle_to` when the request named one, else alone to `reply_to`.
    /// A reply that does not encode is logged (a bug) and left out.
    pub fn push<T: Serialize>(&mut self, reply_to: &str, bundle_to: Option<&str>, reply: &T) {
        let encoded = match wire::encode(reply) {
            Ok(encoded) => encoded,
            Err(e) => {
                tracing::error!(error = %e, "reply does not encode; this is a bug");
                return;
            }
        };
        match bundle_to {
            Some(subject) => self
                .bundled
                .entry(subject.to_string())
                .or_default()
                .push(encoded),
            None => self.alone.push((reply_to.to_string(), encoded)),
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.alone.is_empty() && self.bundled.is_empty()
    }

    /// The messages to publish, `(subject, payload)`: the lone replies, then each bundle
    /// subject's replies packed into as few bundles of at most `max_payload` bytes as their
    /// order allows (a reply too large to share one gets a bundle of its own).
    pub fn into_messages(self, max_payload: usize) -> Vec<(String, Vec<u8>)> {
        let mut messages = self.alone;
        for (subject, replies) in self.bundled {
            for bundle in pack(&replies, max_payload) {
                messages.push((subject.clone(), bundle));
            }
        }
        messages
    }
}

/// Packs encoded replies, in order, into bundles of at most `limit` bytes each.
fn pack(replies: &[Vec<u8>], limit: usize) -> Vec<Vec<u8>> {
    let mut bundles = Vec::new();
    let mut start = 0;
    while start < replies.len() {
        let mut size = BUNDLE_OVERHEAD + replies[start].len();
        let mut end = start + 1;
        while end < replies.len() && size + replies[end].len() <= limit {
            size += replies[end].len();
            end += 1;
        }
        bundles.push(bundle(&replies[start..end]));
        start = end;
    }
    bundles
}

/// One `ReplyBundle` message, `{"replies": [...]}`, from already encoded replies.
fn bundle(replies: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = replies.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(BUNDLE_OVERHEAD + body);
    out.push(0x81); // a map of one entry
    out.push(0xa7); // a string of 7 bytes
    out.extend_from_slice(b"replies");
    let len = replies.len();
    if len < 16 {
        out.push(0x90 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0xdc);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    for reply in replies {
        out.extend_from_slice(reply);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EmbedChunk, EmbedReply, QueuedReply, ReplyBundle};

    fn chunk(id: &str, dims: usize) -> EmbedReply {
        EmbedReply::Chunk(EmbedChunk {
            id: id.into(),
            offset: 0,
            count: 1,
            total: 1,
            dims: dims as u32,
            embeddings: wire::f32_le_bytes([vec![0.5; dims].as_slice()]),
            tokens: vec![3],
            timings: None,
        })
    }

    fn queued(id: &str) -> EmbedReply {
        EmbedReply::Queued(QueuedReply {
            id: id.into(),
            queued: 1,
        })
    }

    fn encoded(reply: &EmbedReply) -> Vec<u8> {
        wire::encode(reply).unwrap()
    }

    #[test]
    fn a_bundle_is_the_encoding_of_its_replies() {
        for n in [1, 15, 16, 17, 300, 70_000] {
            let replies: Vec<EmbedReply> = (0..n)
                .map(|i| {
                    if i % 2 == 0 {
                        queued(&i.to_string())
                    } else {
                        chunk(&i.to_string(), 2)
                    }
                })
                .collect();
            let parts: Vec<Vec<u8>> = replies.iter().map(encoded).collect();
            let bytes = bundle(&parts);
            let expected = ReplyBundle { replies };
            assert_eq!(bytes, wire::encode(&expected).unwrap(), "{n} replies");
            assert_eq!(wire::decode::<ReplyBundle>(&bytes).unwrap(), expected);
        }
    }

    #[test]
    fn bundles_stay_under_the_limit_and_keep_every_reply_in_order() {
        let replies: Vec<EmbedReply> = (0..40).map(|i| chunk(&i.to_string(), 1 + i % 7)).collect();
        let limit = 300;
        let mut outbox = Outbox::default();
        for reply in &replies {
            outbox.push("_INBOX.unused", Some("_INBOX.g.bundle"), reply);
        }
        let messages = outbox.into_messages(limit);
        assert!(messages.len() > 1, "40 replies do not fit in {limit} bytes");
        let mut back = Vec::new();
        for (subject, payload) in messages {
            assert_eq!(subject, "_INBOX.g.bundle");
            assert!(payload.len() <= limit, "{} bytes", payload.len());
            back.extend(wire::decode::<ReplyBundle>(&payload).unwrap().replies);
        }
        assert_eq!(back, replies);
    }

    #[test]
    fn lone_replies_and_bundle_subjects_stay_apart() {
        let mut outbox = Outbox::default();
        outbox.push("_INBOX.a", None, &queued("a"));
        outbox.push("_INBOX.b.1", Some("_INBOX.b.bundle"), &queued("b1"));
        outbox.push("_INBOX.c.1", Some("_INBOX.c.bundle"), &queued("c1"));
        outbox.push("_INBOX.b.2", Some("_INBOX.b.bundle"), &chunk("b2", 4));
        let messages = outbox.into_messages(1 << 20);
        let subjects: Vec<&str> = messages.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(subjects, ["_INBOX.a", "_INBOX.b.bundle", "_INBOX.c.bundle"]);
        assert_eq!(
            wire::decode::<EmbedReply>(&messages[0].1).unwrap(),
            queued("a")
        );
        let b = wire::decode::<ReplyBundle>(&messages[1].1).unwrap();
        assert_eq!(b.replies, vec![queued("b1"), chunk("b2", 4)]);
    }

    #[test]
    fn a_reply_larger_than_the_limit_travels_in_a_bundle_of_its_own() {
        let big = encoded(&chunk("big", 100));
        let small = encoded(&queued("s"));
        let bundles = pack(&[small.clone(), big.clone(), small.clone()], 50);
        assert_eq!(bundles.len(), 3);
        assert_eq!(bundles[1], bundle(&[big]));
    }
}
