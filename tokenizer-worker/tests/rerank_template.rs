//! The Qwen3-Reranker prompt against the qwen3-tiny-reranker golden cases (ids from
//! transformers with the official recipe), and document-only truncation.

use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;
use tokenizer_worker::rerank::{
    ASSISTANT_SUFFIX, DEFAULT_RERANK_INSTRUCTION, RerankOptions, RerankTemplate,
    RerankTemplateError, SYSTEM_PREFIX, user_content,
};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/qwen3-tiny-reranker"
);

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let text = std::fs::read_to_string(Path::new(FIXTURE).join("golden_rerank.json"))
            .expect("read golden_rerank.json");
        serde_json::from_str(&text).expect("parse golden_rerank.json")
    })
}

fn cases() -> &'static [Value] {
    golden()["cases"].as_array().expect("cases")
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

fn template(max_length: usize) -> RerankTemplate {
    RerankTemplate::from_file(
        &Path::new(FIXTURE).join("tokenizer.json"),
        RerankOptions {
            max_length,
            ..RerankOptions::default()
        },
    )
    .expect("load tokenizer")
}

fn case(id: &str) -> &'static Value {
    cases()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("case {id}"))
}

fn encode(
    t: &RerankTemplate,
    case: &Value,
    truncate: bool,
) -> Result<Vec<u32>, RerankTemplateError> {
    t.encode(
        case["query"].as_str().expect("query"),
        case["document"].as_str().expect("document"),
        case["instruction"].as_str(),
        truncate,
    )
    .map(|e| e.ids)
}

#[test]
fn constants_match_the_fixture_template() {
    let template = &golden()["template"];
    assert_eq!(template["prefix"], SYSTEM_PREFIX);
    assert_eq!(template["suffix"], ASSISTANT_SUFFIX);
    assert_eq!(template["default_instruction"], DEFAULT_RERANK_INSTRUCTION);
    let t = template["user_content"].as_str().unwrap();
    assert_eq!(
        user_content("{instruction}", "{query}", "{document}"),
        t,
        "user content layout"
    );
    for case in cases() {
        let instruction = case["instruction"]
            .as_str()
            .unwrap_or(DEFAULT_RERANK_INSTRUCTION);
        assert_eq!(
            user_content(
                instruction,
                case["query"].as_str().unwrap(),
                case["document"].as_str().unwrap()
            ),
            case["formatted_user_content"].as_str().unwrap(),
            "case {}",
            case["id"]
        );
    }
}

#[test]
fn every_case_matches_transformers() {
    let t = template(8192);
    assert!(cases().len() >= 8);
    for case in cases() {
        let encoding = t
            .encode(
                case["query"].as_str().unwrap(),
                case["document"].as_str().unwrap(),
                case["instruction"].as_str(),
                false,
            )
            .expect("encode");
        assert_eq!(encoding.ids, ids(&case["input_ids"]), "case {}", case["id"]);
        assert!(!encoding.truncated, "case {}", case["id"]);
        assert!(encoding.ids.starts_with(t.prefix_ids()));
        assert!(encoding.ids.ends_with(t.suffix_ids()));
    }
}

#[test]
fn exact_limit_is_accepted_without_truncation() {
    let case = case("pair0");
    let want = ids(&case["input_ids"]);
    let t = template(want.len());
    assert_eq!(encode(&t, case, false).unwrap(), want);
    let t = template(want.len() - 1);
    let err = encode(&t, case, false).expect_err("one token over the limit");
    match &err {
        RerankTemplateError::TooLong {
            tokens,
            template,
            document,
            max,
        } => {
            assert_eq!(*tokens, want.len());
            assert_eq!(*max, want.len() - 1);
            assert_eq!(template + document, *tokens);
            assert!(*document > 0 && *document < 15, "{err}");
        }
        other => panic!("expected TooLong, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&want.len().to_string()), "{message}");
    assert!(message.contains(&(want.len() - 1).to_string()), "{message}");
}

#[test]
fn truncation_shortens_only_the_document() {
    let long = case("pair7");
    let full = ids(&long["input_ids"]);
    let empty_doc = template(8192)
        .encode(long["query"].as_str().unwrap(), "", None, false)
        .unwrap()
        .ids;
    let head = empty_doc.len() - template(8192).suffix_ids().len();
    for max in [
        empty_doc.len(),
        empty_doc.len() + 1,
        100,
        257,
        full.len() - 1,
    ] {
        let t = template(max);
        let err = encode(&t, long, false).expect_err("too long without truncation");
        assert!(matches!(err, RerankTemplateError::TooLong { .. }), "{err}");
        let encoding = t
            .encode(
                long["query"].as_str().unwrap(),
                long["document"].as_str().unwrap(),
                None,
                true,
            )
            .unwrap();
        let got = encoding.ids;
        assert!(encoding.truncated);
        assert!(got.len() <= max, "max {max}: {} tokens", got.len());
        // This English document is cut at a word boundary: no token is lost to the cut.
        assert_eq!(got.len(), max, "max {max}");
        assert!(got.starts_with(t.prefix_ids()), "max {max}: prefix intact");
        assert!(got.ends_with(t.suffix_ids()), "max {max}: suffix intact");
        // Template, instruction and query are the untruncated ones, and what is kept of the
        // document is its beginning (the last head token, ": ", may merge with the document).
        let body = got.len() - t.suffix_ids().len();
        assert_eq!(got[..head - 1], full[..head - 1], "max {max}: head intact");
        assert_eq!(got[..body], full[..body], "max {max}: document prefix");
    }
}

#[test]
fn truncation_never_cuts_the_query() {
    let long = case("pair7");
    let empty_doc = template(8192)
        .encode(long["query"].as_str().unwrap(), "", None, false)
        .unwrap()
        .ids;
    let t = template(empty_doc.len() - 1);
    let err = encode(&t, long, true).expect_err("query alone is over the limit");
    match err {
        RerankTemplateError::QueryTooLong { tokens, max } => {
            assert_eq!(tokens, empty_doc.len());
            assert_eq!(max, empty_doc.len() - 1);
        }
        other => panic!("expected QueryTooLong, got {other:?}"),
    }
}

#[test]
fn multibyte_documents_truncate_on_character_boundaries() {
    let chinese = case("pair3");
    let full = ids(&chinese["input_ids"]);
    let t8192 = template(8192);
    let document = chinese["document"].as_str().unwrap();
    let mut checked = 0;
    for max in (full.len() - 12)..full.len() {
        let t = template(max);
        let Ok(encoding) = t.encode(chinese["query"].as_str().unwrap(), document, None, true)
        else {
            continue;
        };
        assert!(encoding.truncated);
        assert!(encoding.ids.len() <= max);
        assert!(encoding.ids.ends_with(t.suffix_ids()));
        // The result is exactly the encoding of some prefix of the document.
        let matched = document
            .char_indices()
            .map(|(i, _)| i)
            .chain([document.len()])
            .any(|cut| {
                t8192
                    .encode(
                        chinese["query"].as_str().unwrap(),
                        &document[..cut],
                        None,
                        false,
                    )
                    .map(|e| e.ids == encoding.ids)
                    .unwrap_or(false)
            });
        assert!(matched, "max {max}: ids are not those of a document prefix");
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} limits could be checked");
}

#[test]
fn a_limit_below_the_template_is_rejected() {
    let err = RerankTemplate::from_file(
        &Path::new(FIXTURE).join("tokenizer.json"),
        RerankOptions {
            max_length: 10,
            ..RerankOptions::default()
        },
    )
    .expect_err("10 tokens cannot hold the template");
    assert!(
        matches!(err, RerankTemplateError::InvalidOptions(_)),
        "{err}"
    );
}
