//! Where a request's replies may go. A worker answers on subjects the requester names (its
//! reply subject, its `bundle_to`), so without a rule any client could aim a worker's answers
//! at another client's inbox and forge them. The rule follows the subject a request arrived on:
//!
//! * on `{requests}.from.{identity}` (which NATS permissions let only `identity` publish on),
//!   replies go only under `_INBOX.{identity}.`, the inbox only `identity` may read;
//! * on the bare request subject, under one of the configured `reply_prefixes` (any inbox,
//!   `_INBOX.`, by default).
//!
//! Both subjects are also capped in length ([`MAX_SUBJECT_BYTES`]). A request whose reply
//! subject breaks the rule gets no answer at all (an error there would itself be a message on
//! a foreign subject); [`DroppedRequests`] counts them and keeps their log lines few.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::subjects::{FROM_TOKEN, Subjects, Task, is_publish_subject, reply_prefix_of};
use common::wire::limits::{MAX_SUBJECT_BYTES, over_bytes};

/// Least time between two log lines about dropped requests.
pub const DROPPED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where the replies of one request may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// It arrived on `{requests}.from.{identity}`: replies only under `_INBOX.{identity}.`.
    Requester {
        /// Who sent it.
        identity: String,
        /// `_INBOX.{identity}.`.
        prefix: String,
    },
    /// It arrived on the bare request subject: replies under any of these prefixes.
    Open(Arc<[String]>),
}

impl Route {
    /// Checks `subject`, the request's `field` (`reply subject` or `bundle_to`), against the
    /// cap and the rule; `Err` says what is wrong, for a person.
    pub fn check(&self, field: &str, subject: &str) -> Result<(), String> {
        if let Some(message) = over_bytes(field, subject, MAX_SUBJECT_BYTES) {
            return Err(message);
        }
        if !is_publish_subject(subject) {
            return Err(format!(
                "`{field}` must be a subject to publish on (dot-separated tokens, no wildcards \
                 or spaces), got {subject:?}"
            ));
        }
        let allowed = match self {
            Self::Requester { prefix, .. } => subject.starts_with(prefix.as_str()),
            Self::Open(prefixes) => prefixes.iter().any(|p| subject.starts_with(p.as_str())),
        };
        if allowed {
            return Ok(());
        }
        Err(match self {
            Self::Requester { identity, prefix } => format!(
                "`{field}` must start with `{prefix}`: requests from `{identity}` are answered \
                 only in its own inbox; got {subject:?}"
            ),
            Self::Open(prefixes) => format!(
                "`{field}` must start with one of `{}`; got {subject:?}",
                prefixes.join("`, `")
            ),
        })
    }

    /// Who sent the request, when its subject says (`-` for the bare subject), for logs.
    pub fn requester(&self) -> &str {
        match self {
            Self::Requester { identity, .. } => identity,
            Self::Open(_) => "-",
        }
    }
}

/// The reply rule of one worker: its task's subjects and the prefixes of the bare subject.
#[derive(Debug, Clone)]
pub struct ReplyRules {
    /// The deployment's subjects.
    subjects: Subjects,
    /// The worker's task.
    task: Task,
    /// The bare request subject of the task.
    bare: String,
    /// Prefixes allowed on the bare subject.
    prefixes: Arc<[String]>,
}

impl ReplyRules {
    /// The rule of a worker serving `task` on `subjects`, with `prefixes` allowed on the bare
    /// subject; refuses a prefix that is not one or more subject tokens followed by `.`.
    pub fn new(subjects: Subjects, task: Task, prefixes: &[String]) -> anyhow::Result<Self> {
        for prefix in prefixes {
            anyhow::ensure!(
                prefix.strip_suffix('.').is_some_and(is_publish_subject),
                "reply prefix {prefix:?} must be subject tokens followed by `.` (like `_INBOX.`)"
            );
        }
        Ok(Self {
            bare: subjects.requests_for(task),
            subjects,
            task,
            prefixes: prefixes.into(),
        })
    }

    /// Whether the bare request subject is served (some prefix is allowed there).
    pub fn serves_bare_subject(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// The subjects the worker takes requests on: the bare one (when served) and
    /// `{requests}.from.*`.
    pub fn request_subjects(&self) -> Vec<String> {
        let mut subjects = vec![format!("{}.{FROM_TOKEN}.*", self.bare)];
        if self.serves_bare_subject() {
            subjects.insert(0, self.bare.clone());
        }
        subjects
    }

    /// The route of a request that arrived on `subject`; `None` for a subject that names no
    /// valid identity (nothing may be answered then).
    pub fn route_of(&self, subject: &str) -> Option<Route> {
        if subject == self.bare {
            return self
                .serves_bare_subject()
                .then(|| Route::Open(Arc::clone(&self.prefixes)));
        }
        let identity = self.subjects.requester_of(self.task, subject)?;
        Some(Route::Requester {
            identity: identity.to_string(),
            prefix: reply_prefix_of(identity),
        })
    }
}

/// Counts the requests dropped for their reply subject and spaces out the log lines about
/// them: a client sending thousands writes one line every [`DROPPED_LOG_EVERY`], not one each.
#[derive(Debug, Default)]
pub struct DroppedRequests {
    /// Dropped since the worker started.
    total: u64,
    /// Dropped since the last line, not logged one by one.
    unlogged: u64,
    /// When the last line was written.
    last_line: Option<Instant>,
}

impl DroppedRequests {
    /// Counts one dropped request at `now`; `Some(unlogged)` when a line is due now
    /// (`unlogged`: those dropped since the previous line without one of their own).
    pub fn count(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        let due = self
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= DROPPED_LOG_EVERY);
        if !due {
            self.unlogged += 1;
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// Requests dropped since the worker started.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// At most `max` characters of `text`, for a log line about a hostile request.
pub fn shortened(text: &str, max: usize) -> &str {
    text.char_indices()
        .nth(max)
        .map_or(text, |(end, _)| &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(prefixes: &[&str]) -> ReplyRules {
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        ReplyRules::new(Subjects::default(), Task::Embed, &prefixes).expect("valid prefixes")
    }

    #[test]
    fn requests_from_an_identity_are_answered_only_in_its_inbox() {
        let rules = rules(&["_INBOX."]);
        let route = rules
            .route_of("embed.requests.from.alice")
            .expect("a route");
        assert_eq!(route.requester(), "alice");
        assert!(route.check("reply subject", "_INBOX.alice.x1").is_ok());
        for foreign in ["_INBOX.bob.x", "_INBOX.alice", "_INBOX.alicex.y", "alice.x"] {
            let error = route.check("bundle_to", foreign).expect_err(foreign);
            assert!(
                error.contains("`bundle_to` must start with `_INBOX.alice.`"),
                "{error}"
            );
        }
        // The identity's inbox still has to be a subject within the cap.
        assert!(route.check("bundle_to", "_INBOX.alice.*").is_err());
        let long = format!("_INBOX.alice.{}", "x".repeat(MAX_SUBJECT_BYTES));
        let error = route.check("bundle_to", &long).unwrap_err();
        assert!(error.contains("at most 256"), "{error}");
        // A rerank subject or a malformed identity names nobody.
        assert_eq!(rules.route_of("embed.rerank.from.alice"), None);
        assert_eq!(rules.route_of("embed.requests.from.a+b"), None);
    }

    #[test]
    fn the_bare_subject_takes_the_configured_prefixes() {
        let open = rules(&["_INBOX.", "clients.replies."]);
        let route = open.route_of("embed.requests").expect("served");
        assert_eq!(route.requester(), "-");
        for good in ["_INBOX.anything", "_INBOX.bob.x", "clients.replies.7"] {
            assert!(route.check("reply subject", good).is_ok(), "{good}");
        }
        let error = route.check("reply subject", "evil.subject").unwrap_err();
        assert!(
            error.contains("one of `_INBOX.`, `clients.replies.`"),
            "{error}"
        );
        assert_eq!(
            open.request_subjects(),
            ["embed.requests", "embed.requests.from.*"]
        );

        let closed = rules(&[]);
        assert!(!closed.serves_bare_subject());
        assert_eq!(closed.route_of("embed.requests"), None);
        assert_eq!(closed.request_subjects(), ["embed.requests.from.*"]);
        for bad in ["_INBOX", "", ".", "a..", "a.*."] {
            let prefixes = vec![bad.to_string()];
            assert!(
                ReplyRules::new(Subjects::default(), Task::Embed, &prefixes).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn dropped_requests_are_all_counted_but_logged_at_most_every_interval() {
        let mut dropped = DroppedRequests::default();
        let start = Instant::now();
        assert_eq!(dropped.count(start), Some(0));
        for k in 1..=5 {
            assert_eq!(dropped.count(start + Duration::from_secs(k)), None);
        }
        assert_eq!(dropped.count(start + DROPPED_LOG_EVERY), Some(5));
        assert_eq!(dropped.count(start + DROPPED_LOG_EVERY), None);
        assert_eq!(dropped.total(), 8);
    }

    #[test]
    fn log_fields_are_shortened_on_character_boundaries() {
        assert_eq!(shortened("abcdef", 3), "abc");
        assert_eq!(shortened("ab", 3), "ab");
        assert_eq!(shortened("\u{e9}\u{e9}\u{e9}\u{e9}", 2), "\u{e9}\u{e9}");
    }
}
