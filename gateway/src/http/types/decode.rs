//! Decoding a request body straight into its typed request, with precise errors: UTF-8,
//! syntax, an object at the top, then each field by name (every error names its field in
//! `param`). No intermediate JSON value is built: strings are looked at where the parser holds
//! them, and only what passes the limits is kept.
//!
//! Serde's error type can only carry a message, so a field reader that refuses a value puts
//! the [`ApiError`] it means in a thread-local slot and returns a serde error; [`decode`]
//! answers with that error when there is one (parsing is synchronous, on one thread).

use std::cell::Cell;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::fields::Text;
use super::limits::Limits;
use common::subjects::Task;

use crate::http::error::ApiError;

thread_local! {
    /// The refusal behind the serde error being returned, if it is one of ours.
    static REFUSAL: Cell<Option<ApiError>> = const { Cell::new(None) };
}

/// A request body type: read from the fields of the body's JSON object.
pub trait RequestBody: Sized {
    /// The task whose models the body's `model` names, for bodies that have one: a body
    /// naming no model of that task gets 404 whatever else is wrong with it.
    fn model_task() -> Option<Task> {
        None
    }

    /// Reads the request from `fields`, the body object's entries, within `limits`; unknown
    /// fields are skipped, refusals go through [`refuse`].
    fn read<'de, M: MapAccess<'de>>(fields: M, limits: Limits) -> Result<Self, M::Error>;
}

/// Only the `model` of a body; every other field is skipped unread.
#[derive(Debug)]
pub struct ModelName(pub Option<String>);

impl RequestBody for ModelName {
    fn read<'de, M: MapAccess<'de>>(mut fields: M, _: Limits) -> Result<Self, M::Error> {
        let mut model = None;
        while let Some(key) = fields.next_key::<ModelKey>()? {
            match key {
                ModelKey::Model => model = fields.next_value_seed(Take(Text::named("model")))?,
                ModelKey::Other => fields.next_value::<de::IgnoredAny>().map(drop)?,
            }
        }
        Ok(Self(model))
    }
}

/// The keys [`ModelName`] reads.
#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum ModelKey {
    Model,
    #[serde(other)]
    Other,
}

/// The field `result` refuses (for tests of the readers): panics on anything but a field
/// refusal.
#[cfg(test)]
pub fn refused_param<T: std::fmt::Debug>(result: Result<T, ApiError>) -> String {
    match result {
        Err(ApiError::InvalidField { param, .. }) => param,
        other => panic!("expected a field refusal, got {other:?}"),
    }
}

/// Decodes `body` as a `T` within `limits`: the one way request bodies are read.
pub fn decode<T: RequestBody>(body: &[u8], limits: Limits) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    if text.trim_ascii().is_empty() {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    REFUSAL.with(Cell::take);
    let mut parser = serde_json::Deserializer::from_str(text);
    let object = Take(Object::<T> {
        limits,
        body: PhantomData,
    });
    let result = object
        .deserialize(&mut parser)
        .and_then(|request| parser.end().map(|()| request));
    let refusal = REFUSAL.with(Cell::take);
    result.map_err(|e| refusal.unwrap_or_else(|| ApiError::InvalidJson(e.to_string())))
}

/// Records `error` as the reason parsing stops and returns the serde error that stops it.
pub fn refuse<E: de::Error>(error: ApiError) -> E {
    let message = error.to_string();
    REFUSAL.with(|slot| slot.set(Some(error)));
    E::custom(message)
}

/// A JSON scalar as the parser saw it; strings are borrowed, nothing is kept unless taken.
#[derive(Debug, Clone, Copy)]
pub enum Scalar<'s> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A non-negative integer.
    Unsigned(u64),
    /// A negative integer.
    Signed(i64),
    /// A number with a fraction or exponent, or beyond 64 bits.
    Float(f64),
    /// A string.
    Text(&'s str),
}

impl Scalar<'_> {
    /// The kind of value, for messages (`a number`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Unsigned(_) | Self::Signed(_) | Self::Float(_) => "a number",
            Self::Text(_) => "a string",
        }
    }
}

/// What one field (or list item) accepts. Each method takes one kind of JSON value; the
/// defaults refuse it with [`Field::unexpected`].
pub trait Field<'de>: Sized {
    /// What the field reads to.
    type Value;

    /// The refusal of a value of the wrong `kind` (`a list`).
    fn unexpected(&self, kind: &str) -> ApiError;

    /// Takes a scalar.
    fn scalar(self, value: Scalar<'_>) -> Result<Self::Value, ApiError> {
        Err(self.unexpected(value.kind()))
    }

    /// Takes a list, item by item.
    fn list<S: SeqAccess<'de>>(self, items: S) -> Result<Self::Value, S::Error> {
        drop(items);
        Err(refuse(self.unexpected("a list")))
    }

    /// Takes an object, entry by entry.
    fn object<M: MapAccess<'de>>(self, entries: M) -> Result<Self::Value, M::Error> {
        drop(entries);
        Err(refuse(self.unexpected("an object")))
    }
}

/// Reads one value with the [`Field`] `F` (a serde seed and visitor around it).
pub struct Take<F>(pub F);

impl<'de, F: Field<'de>> DeserializeSeed<'de> for Take<F> {
    type Value = F::Value;

    fn deserialize<D: de::Deserializer<'de>>(self, value: D) -> Result<F::Value, D::Error> {
        value.deserialize_any(self)
    }
}

impl<'de, F: Field<'de>> Visitor<'de> for Take<F> {
    type Value = F::Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<F::Value, E> {
        self.0.scalar(Scalar::Null).map_err(refuse)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<F::Value, E> {
        self.0.scalar(Scalar::Bool(value)).map_err(refuse)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<F::Value, E> {
        self.0.scalar(Scalar::Unsigned(value)).map_err(refuse)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<F::Value, E> {
        self.0.scalar(Scalar::Signed(value)).map_err(refuse)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<F::Value, E> {
        self.0.scalar(Scalar::Float(value)).map_err(refuse)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<F::Value, E> {
        self.0.scalar(Scalar::Text(value)).map_err(refuse)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, items: S) -> Result<F::Value, S::Error> {
        self.0.list(items)
    }

    fn visit_map<M: MapAccess<'de>>(self, entries: M) -> Result<F::Value, M::Error> {
        self.0.object(entries)
    }
}

/// The body: a JSON object read as a `T`.
struct Object<T> {
    limits: Limits,
    body: PhantomData<T>,
}

impl<'de, T: RequestBody> Field<'de> for Object<T> {
    type Value = T;

    fn unexpected(&self, kind: &str) -> ApiError {
        ApiError::InvalidJson(format!("expected an object, got {kind}"))
    }

    fn object<M: MapAccess<'de>>(self, entries: M) -> Result<T, M::Error> {
        T::read(entries, self.limits)
    }
}
