//! Tokenization against the qwen3-tiny golden cases (ids from the Python `tokenizers` library
//! and transformers), with and without a post-processor that appends `<|endoftext|>`: the
//! formatted texts, the ids, tokens with offsets, decoding, batches, threads and load errors.
//! Truncation is in `truncation.rs`, the reused query head in `query_head.rs`.

mod support;

use std::path::Path;

use common::wire::InputType;
use serde_json::Value;
use support::*;
use tokenizer_worker::tokenize::{
    DEFAULT_INSTRUCTION, TextTokenizer, TokenizeError, TokenizerOptions,
};

#[test]
fn every_golden_case_formats_exactly() {
    let tokenizer = tokenizer();
    for case in cases() {
        let formatted = tokenizer.format(&case.text, case.kind, case.instruction.as_deref());
        assert_eq!(formatted, case.formatted, "case {}", case.id);
    }
}

#[test]
fn query_without_instruction_uses_the_default_and_documents_are_untouched() {
    let tokenizer = tokenizer();
    let web = case("query_web_1");
    assert_eq!(web.instruction.as_deref(), Some(DEFAULT_INSTRUCTION));
    assert_eq!(tokenizer.default_instruction(), DEFAULT_INSTRUCTION);
    assert_eq!(
        tokenizer.format(&web.text, InputType::Query, None),
        web.formatted
    );
    assert_eq!(
        tokenizer
            .encode(&web.text, InputType::Query, None, None)
            .expect("encode"),
        web.input_ids
    );
    let formatted = tokenizer.format("x", InputType::Query, Some("task"));
    assert_eq!(formatted, "Instruct: task\nQuery:x");
    let doc = tokenizer.format("Query: y", InputType::Document, Some("ignored"));
    assert!(matches!(doc, std::borrow::Cow::Borrowed("Query: y")));
}

#[test]
fn custom_default_instruction_is_used() {
    let tokenizer = with_options(TokenizerOptions {
        default_instruction:
            "Given a question, retrieve Wikipedia passages that answer the question".into(),
        ..TokenizerOptions::default()
    });
    let custom = case("query_custom_task");
    let ids = tokenizer
        .encode(&custom.text, InputType::Query, None, None)
        .expect("encode");
    assert_eq!(ids, custom.input_ids);
}

#[test]
fn every_golden_case_encodes_exactly() {
    let tokenizer = tokenizer();
    assert!(tokenizer.post_processor_appends_eot());
    assert_eq!(tokenizer.eot_id(), EOT);
    assert_eq!(tokenizer.max_length(), 32768);
    assert_golden(tokenizer, "embedding tokenizer");
}

#[test]
fn literal_endoftext_and_empty_text() {
    let tokenizer = tokenizer();
    let ids = tokenizer
        .encode("<|endoftext|>", InputType::Document, None, None)
        .expect("encode");
    assert_eq!(ids, vec![EOT, EOT]);
    let ids = tokenizer
        .encode("", InputType::Document, None, None)
        .expect("encode");
    assert_eq!(ids, vec![EOT]);
}

#[test]
fn tokenizer_without_post_processor_gives_the_same_ids() {
    let tokenizer = base_tokenizer(TokenizerOptions::default());
    assert!(!tokenizer.post_processor_appends_eot());
    assert_eq!(tokenizer.eot_id(), EOT);
    assert_golden(&tokenizer, "no post-processor");
}

#[test]
fn reranker_base_tokenizer_gives_the_same_ids() {
    let path = Path::new(RERANKER_FIXTURE).join("tokenizer.json");
    let tokenizer =
        TextTokenizer::from_file(&path, TokenizerOptions::default()).expect("load reranker");
    assert!(!tokenizer.post_processor_appends_eot());
    assert_golden(&tokenizer, "reranker tokenizer");
}

#[test]
fn tokens_are_the_ids_the_model_reads_with_their_offsets() {
    let tokenizer = with_options(TokenizerOptions {
        max_length: 16,
        ..TokenizerOptions::default()
    });
    for case in cases() {
        let instruction = case.instruction.as_deref();
        // Never truncated, whatever the limit.
        let plain = tokenizer
            .tokens(&case.text, case.kind, instruction, true, false)
            .expect("ids");
        assert_eq!(plain.ids, case.input_ids, "{}", case.id);
        assert!(plain.tokens.is_empty());
        let detailed = tokenizer
            .tokens(&case.text, case.kind, instruction, true, true)
            .expect("tokens");
        assert_eq!(detailed.ids, case.input_ids, "{}", case.id);
        assert_eq!(detailed.tokens.len(), detailed.ids.len(), "{}", case.id);
        let last = detailed.tokens.last().expect("a last token");
        assert_eq!(
            (last.text.as_str(), last.special, last.start),
            ("<|endoftext|>", true, None)
        );
        // The pieces cover the formatted text, in order, where their offsets say.
        let mut end = 0;
        for token in &detailed.tokens[..detailed.tokens.len() - 1] {
            let (start, stop) = (token.start.unwrap() as usize, token.stop.unwrap() as usize);
            assert!(start >= end.min(start) && stop >= start, "{}", case.id);
            assert_eq!(case.formatted.get(start..stop), Some(token.text.as_str()));
            end = stop;
        }
        assert_eq!(end, case.formatted.len(), "{}", case.id);
        let bare = tokenizer
            .tokens(&case.text, case.kind, instruction, false, true)
            .expect("without the final token");
        assert_eq!(bare.ids, case.input_ids[..case.input_ids.len() - 1]);
        assert_eq!(bare.tokens.len(), bare.ids.len());
    }
    let literal = case("literal_endoftext");
    let tokens = tokenizer
        .tokens(&literal.text, literal.kind, None, true, true)
        .expect("tokens");
    assert!(tokens.tokens[0].special && tokens.tokens[0].start == Some(0));
}

#[test]
fn decode_gives_the_text_back_and_refuses_unknown_ids() {
    let tokenizer = tokenizer();
    for id in ["en_short", "zh_sentence", "emoji", "code_snippet"] {
        let case = case(id);
        assert_eq!(
            tokenizer.decode(&case.input_ids, true).expect("decodes"),
            case.text,
            "{id}"
        );
        let with_special = tokenizer.decode(&case.input_ids, false).expect("decodes");
        assert_eq!(with_special, format!("{}<|endoftext|>", case.text));
    }
    let error = tokenizer.decode(&[785, 999_999_999], true).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("token id 999999999 is not in the vocabulary of"),
        "{error}"
    );
}

#[test]
fn encode_batch_reports_each_text() {
    let tokenizer = with_options(TokenizerOptions {
        max_length: 20,
        ..TokenizerOptions::default()
    });
    let texts = [case("en_short").text.as_str(), &case("long_600").text, ""];
    let results = tokenizer.encode_batch(&texts, InputType::Document, None, None);
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[0].as_ref().expect("short"),
        &case("en_short").input_ids
    );
    assert!(matches!(
        results[1],
        Err(TokenizeError::TooLong {
            tokens: 610,
            max: 20
        })
    ));
    assert_eq!(results[2].as_ref().expect("empty"), &vec![EOT]);
}

#[test]
fn concurrent_use_from_threads_gives_the_golden_ids() {
    let tokenizer = tokenizer();
    std::thread::scope(|scope| {
        for chunk in cases().chunks(5) {
            scope.spawn(move || {
                for case in chunk {
                    let ids = tokenizer
                        .encode(&case.text, case.kind, case.instruction.as_deref(), None)
                        .expect("encode");
                    assert_eq!(ids, case.input_ids, "case {}", case.id);
                }
            });
        }
    });
}

#[test]
fn load_errors_name_the_problem() {
    let missing = Path::new(FIXTURE).join("no-such-tokenizer.json");
    let err =
        TextTokenizer::from_file(&missing, TokenizerOptions::default()).expect_err("missing file");
    assert!(err.to_string().contains("no-such-tokenizer.json"), "{err}");

    let mut json = fixture_json();
    json["post_processor"] = Value::Null;
    let added = json["added_tokens"].as_array_mut().expect("added_tokens");
    added.retain(|token| token["content"] != "<|endoftext|>");
    let file = TempFile::json("no-endoftext", &json);
    let err = TextTokenizer::from_file(&file.0, TokenizerOptions::default())
        .expect_err("no <|endoftext|>");
    assert!(matches!(err, TokenizeError::MissingEndOfText), "{err:?}");

    let err = TextTokenizer::from_file(
        &Path::new(FIXTURE).join("tokenizer.json"),
        TokenizerOptions {
            max_length: 1,
            ..TokenizerOptions::default()
        },
    )
    .expect_err("max_length 1");
    assert!(matches!(err, TokenizeError::InvalidOptions(_)), "{err:?}");
}

#[test]
fn truncation_and_padding_in_the_file_are_ignored() {
    let mut json = fixture_json();
    json["truncation"] = serde_json::json!({
        "direction": "Right", "max_length": 5, "strategy": "LongestFirst", "stride": 0
    });
    json["padding"] = serde_json::json!({
        "strategy": {"Fixed": 64}, "direction": "Left", "pad_to_multiple_of": null,
        "pad_id": 151643, "pad_type_id": 0, "pad_token": "<|endoftext|>"
    });
    let file = TempFile::json("truncation-padding", &json);
    let tokenizer = TextTokenizer::from_file(&file.0, TokenizerOptions::default()).expect("load");
    assert_golden(&tokenizer, "file with truncation and padding");
}
