//! The typed request bodies, one module per API, decoded straight from the body bytes (see
//! [`decode`]) within the gateway's [`Limits`], and described in the OpenAPI document by
//! their `ToSchema` derives.
//!
//! Adding a route's body: a struct deriving `ToSchema` (doc comments become the
//! descriptions), a `#[serde(field_identifier)]` key enum with `#[serde(other)] Other`, and a
//! [`RequestBody`] impl reading each key with a reader from [`fields`].

pub mod cohere;
pub mod decode;
pub mod embeddings;
pub mod fields;
pub mod limits;
pub mod rerank;
pub mod schema;
pub mod seed;
pub mod similarity;
pub mod tei;
pub mod texts;
pub mod tokenize;

pub use decode::{RequestBody, decode};
pub use embeddings::EmbeddingsRequest;
pub use limits::Limits;
pub use rerank::{RerankRequest, TeiRerankRequest};
pub use seed::SeedRequest;
