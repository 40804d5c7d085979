//! `embed-jsonl`: the bulk indexing job. Reads a JSONL file, embeds one text per line
//! through a qwen3-embed service (the gateway's OpenAI route over HTTP, or the public NATS
//! API), and writes the vectors in input order to JSONL or `.npy`, resumably.
//!
//! # Layout
//! - [`options`]: the command line.
//! - [`job`]: the run: resume or start, read, embed concurrently, write in order,
//!   checkpoint.
//! - [`input`]: the JSONL reader (text and id fields, byte offsets for resuming).
//! - [`backend`]: the HTTP and NATS clients of the service.
//! - [`retry`]: backoff between attempts, `Retry-After`.
//! - [`output`]: the JSONL and `.npy` writers.
//! - [`checkpoint`]: the progress file and its crash-safe updates.
//! - [`error`]: why a job stops.
//! - [`nats_auth`]: the `nats-auth` tool's NATS identities and permissions per role.

pub mod backend;
pub mod checkpoint;
pub mod error;
pub mod input;
pub mod job;
pub mod nats_auth;
pub mod options;
pub mod output;
pub mod retry;

pub use error::CliError;
pub use job::{Summary, run};
pub use options::{Format, Options};
