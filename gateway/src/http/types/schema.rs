//! Schemas of fields whose JSON shape differs from their Rust type (a string or a list, a
//! string among fixed spellings), for `#[schema(schema_with = ...)]`.

use utoipa::openapi::schema::{Array, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};

/// A string, or a non-empty list of strings.
pub fn text_or_texts() -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(
            Array::builder()
                .items(ObjectBuilder::new().schema_type(Type::String))
                .min_items(Some(1)),
        )
        .build()
        .into()
}

/// A non-empty list of strings or of objects with a string `text` (other keys ignored).
pub fn documents() -> Schema {
    let text_object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("text", ObjectBuilder::new().schema_type(Type::String))
        .required("text");
    let item = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(text_object);
    Array::builder()
        .items(item)
        .min_items(Some(1))
        .build()
        .into()
}

/// The spellings of `priority` and the lane each names.
pub const PRIORITIES: &[(&str, common::wire::Priority)] = &[
    ("interactive", common::wire::Priority::Interactive),
    ("bulk", common::wire::Priority::Bulk),
];

/// How `priority` reads: one of [`PRIORITIES`].
pub const PRIORITY: super::fields::Choice<common::wire::Priority> = super::fields::Choice {
    name: "priority",
    choices: PRIORITIES,
    expected: "`interactive` or `bulk`",
};

/// The schema of `priority`.
pub fn priorities() -> RefOr<Schema> {
    choice(PRIORITIES)
}

/// An optional string among the spellings of `choices`.
pub fn choice<T>(choices: &[(&str, T)]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(choices.iter().map(|(name, _)| *name)))
        .build()
        .into()
}

/// An optional integer of at least 1.
pub fn positive_integer() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .build()
        .into()
}
