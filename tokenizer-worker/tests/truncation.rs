//! Truncation against the qwen3-tiny fixture: right and left, queries and documents, the
//! limit inclusive and its smallest value.

mod support;

use common::wire::{InputType, TruncationDirection};
use support::*;
use tokenizer_worker::tokenize::{TokenizeError, TokenizerOptions};

#[test]
fn truncation_keeps_the_first_tokens_and_the_final_endoftext() {
    let long = case("long_2000");
    assert_eq!(long.input_ids.len(), 2011);
    let options = TokenizerOptions {
        max_length: 100,
        ..TokenizerOptions::default()
    };
    let mut expected = long.input_ids[..99].to_vec();
    expected.push(EOT);
    for tokenizer in [with_options(options.clone()), base_tokenizer(options)] {
        let ids = tokenizer
            .encode(
                &long.text,
                long.kind,
                None,
                Some(TruncationDirection::Right),
            )
            .expect("truncated");
        assert_eq!(ids, expected);
        // Short texts are untouched by truncation.
        let short = case("en_short");
        let ids = tokenizer
            .encode(
                &short.text,
                short.kind,
                None,
                Some(TruncationDirection::Right),
            )
            .expect("short");
        assert_eq!(ids, short.input_ids);
    }
}

#[test]
fn left_truncation_keeps_the_last_tokens_of_a_document() {
    let long = case("long_2000");
    let body = &long.input_ids[..long.input_ids.len() - 1];
    let options = TokenizerOptions {
        max_length: 100,
        ..TokenizerOptions::default()
    };
    // The tokenizer's own ids of the whole text: the last 99 of them, then `<|endoftext|>`.
    let mut expected = body[body.len() - 99..].to_vec();
    expected.push(EOT);
    for tokenizer in [with_options(options.clone()), base_tokenizer(options)] {
        let ids = tokenizer
            .encode(&long.text, long.kind, None, Some(TruncationDirection::Left))
            .expect("truncated");
        assert_eq!(ids, expected);
        let short = case("en_short");
        let ids = tokenizer
            .encode(
                &short.text,
                short.kind,
                None,
                Some(TruncationDirection::Left),
            )
            .expect("short");
        assert_eq!(ids, short.input_ids, "short texts are untouched");
    }
}

#[test]
fn left_truncation_of_a_query_keeps_its_template_whole() {
    // Starts with a space, so `Query:` and the text are tokenized apart.
    let text = " rust is a language for reliable software".repeat(40);
    let roomy = with_options(TokenizerOptions::default());
    let template = roomy
        .encode("", InputType::Query, None, None)
        .expect("template");
    let template = &template[..template.len() - 1];
    let whole = roomy
        .encode(&text, InputType::Query, None, None)
        .expect("whole query");
    assert_eq!(&whole[..template.len()], template, "the template leads");
    let body = &whole[template.len()..whole.len() - 1];

    let max = 64;
    let options = TokenizerOptions {
        max_length: max,
        ..TokenizerOptions::default()
    };
    let mut expected = template.to_vec();
    expected.extend_from_slice(&body[body.len() - (max - 1 - template.len())..]);
    expected.push(EOT);
    for tokenizer in [with_options(options.clone()), base_tokenizer(options)] {
        let ids = tokenizer
            .encode(
                &text,
                InputType::Query,
                None,
                Some(TruncationDirection::Left),
            )
            .expect("truncated");
        assert_eq!(ids.len(), max);
        assert_eq!(ids, expected);
        // A custom instruction (tokenized with the text, not reused from load) too.
        let custom = tokenizer
            .encode(
                &text,
                InputType::Query,
                Some("Find code"),
                Some(TruncationDirection::Left),
            )
            .expect("custom instruction");
        let head = roomy
            .encode("", InputType::Query, Some("Find code"), None)
            .expect("custom template");
        let head = &head[..head.len() - 1];
        assert_eq!(&custom[..head.len()], head);
        assert_eq!(
            &custom[custom.len() - 10..],
            &expected[expected.len() - 10..]
        );
    }

    // A template that leaves no room for the text is refused, naming both numbers.
    let tight = with_options(TokenizerOptions {
        max_length: template.len(),
        ..TokenizerOptions::default()
    });
    let error = tight
        .encode(
            &text,
            InputType::Query,
            None,
            Some(TruncationDirection::Left),
        )
        .expect_err("no room for the text");
    assert!(
        matches!(error, TokenizeError::TemplateTooLong { tokens, max } if tokens == template.len() && max == template.len()),
        "{error:?}"
    );
}

#[test]
fn limit_is_inclusive_and_too_long_names_both_lengths() {
    let long = case("long_600");
    let tokens = long.input_ids.len();
    let exact = with_options(TokenizerOptions {
        max_length: tokens,
        ..TokenizerOptions::default()
    });
    let ids = exact
        .encode(&long.text, long.kind, None, None)
        .expect("fits exactly");
    assert_eq!(ids, long.input_ids);

    let short = with_options(TokenizerOptions {
        max_length: tokens - 1,
        ..TokenizerOptions::default()
    });
    let err = short
        .encode(&long.text, long.kind, None, None)
        .expect_err("one token too many");
    assert!(
        matches!(err, TokenizeError::TooLong { tokens: t, max: m } if t == tokens && m == tokens - 1),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&tokens.to_string()), "{message}");
    assert!(message.contains(&(tokens - 1).to_string()), "{message}");
}

#[test]
fn smallest_limit_keeps_one_token_and_endoftext() {
    let tokenizer = with_options(TokenizerOptions {
        max_length: 2,
        ..TokenizerOptions::default()
    });
    let literal = case("literal_endoftext");
    let ids = tokenizer
        .encode(&literal.text, literal.kind, None, None)
        .expect("two tokens fit");
    assert_eq!(ids, vec![EOT, EOT]);
    let short = case("en_short");
    let ids = tokenizer
        .encode(
            &short.text,
            short.kind,
            None,
            Some(TruncationDirection::Right),
        )
        .expect("truncated");
    assert_eq!(ids, vec![short.input_ids[0], EOT]);
}
