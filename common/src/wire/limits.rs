//! Caps on the lengths of what a requester names in a request: each is copied into every
//! batch item (or tokenized with every input) of the request, so none may grow a batch or the
//! work without bound. The tokenizer workers refuse a request over a cap with
//! `invalid_request` naming the field, its length and the cap (`docs/protocol.md`).
//!
//! A request's trace context needs no cap of its own: only a valid `X-Request-Id` (at most
//! [`MAX_REQUEST_ID_LEN`](crate::trace::MAX_REQUEST_ID_LEN) bytes) and a valid `traceparent`
//! (55 bytes) are taken from its headers ([`RequestTrace`](crate::trace::RequestTrace)).

/// Longest request `id`, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Longest reply subject or `bundle_to`, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// Longest `instruction`, in characters (the gateway's default task is about 70).
pub const MAX_INSTRUCTION_CHARS: usize = 4096;

/// What is wrong with a field over its cap, for a person: `None` when `value` is within
/// `cap` bytes.
pub fn over_bytes(field: &str, value: &str, cap: usize) -> Option<String> {
    (value.len() > cap).then(|| {
        format!(
            "`{field}` is {} bytes long; at most {cap} are allowed",
            value.len()
        )
    })
}

/// What is wrong with a field over its cap in characters, for a person: `None` when `value`
/// holds at most `cap` characters.
pub fn over_chars(field: &str, value: &str, cap: usize) -> Option<String> {
    // Characters are never more than bytes: count only values that could be over.
    if value.len() <= cap {
        return None;
    }
    let chars = value.chars().count();
    (chars > cap)
        .then(|| format!("`{field}` is {chars} characters long; at most {cap} are allowed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_over_its_cap_is_named_with_its_length_and_the_cap() {
        assert_eq!(
            over_bytes("id", &"x".repeat(MAX_ID_BYTES), MAX_ID_BYTES),
            None
        );
        let message = over_bytes("id", &"x".repeat(MAX_ID_BYTES + 1), MAX_ID_BYTES).unwrap();
        assert_eq!(message, "`id` is 257 bytes long; at most 256 are allowed");
        // Four bytes, one character each: under a cap of 4,096 characters, over in bytes.
        let wide = "\u{1F600}".repeat(MAX_INSTRUCTION_CHARS);
        assert_eq!(
            over_chars("instruction", &wide, MAX_INSTRUCTION_CHARS),
            None
        );
        let message = over_chars("instruction", &format!("{wide}a"), MAX_INSTRUCTION_CHARS);
        assert_eq!(
            message.as_deref(),
            Some("`instruction` is 4097 characters long; at most 4096 are allowed")
        );
    }
}
