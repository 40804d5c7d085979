//! What the tokenizer tests share: the qwen3-tiny fixture, its golden cases (ids from the
//! Python `tokenizers` library and transformers) and tokenizers built from it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::wire::InputType;
use serde_json::Value;
use tokenizer_worker::tokenize::{TextTokenizer, TokenizerOptions};

pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/qwen3-tiny"
);
pub const RERANKER_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/qwen3-tiny-reranker"
);
pub const EOT: u32 = 151643;

pub struct Case {
    pub id: String,
    pub text: String,
    pub kind: InputType,
    pub instruction: Option<String>,
    pub formatted: String,
    pub input_ids: Vec<u32>,
}

pub fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let path = Path::new(FIXTURE).join("golden.json");
        let text = std::fs::read_to_string(&path).expect("read golden.json");
        let golden: Value = serde_json::from_str(&text).expect("parse golden.json");
        let cases: Vec<Case> = golden["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|case| Case {
                id: case["id"].as_str().expect("id").to_owned(),
                text: case["text"].as_str().expect("text").to_owned(),
                kind: if case["is_query"].as_bool().expect("is_query") {
                    InputType::Query
                } else {
                    InputType::Document
                },
                instruction: case["instruction"].as_str().map(str::to_owned),
                formatted: case["formatted"].as_str().expect("formatted").to_owned(),
                input_ids: case["input_ids"]
                    .as_array()
                    .expect("input_ids")
                    .iter()
                    .map(|id| u32::try_from(id.as_u64().expect("id")).expect("u32 id"))
                    .collect(),
            })
            .collect();
        assert_eq!(cases.len(), 17, "the fixture has 17 cases");
        cases
    })
}

pub fn case(id: &str) -> &'static Case {
    cases()
        .iter()
        .find(|case| case.id == id)
        .unwrap_or_else(|| panic!("no case {id}"))
}

/// The fixture tokenizer (its post-processor appends `<|endoftext|>`), default options.
pub fn tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| with_options(TokenizerOptions::default()))
}

pub fn with_options(options: TokenizerOptions) -> TextTokenizer {
    TextTokenizer::from_file(&Path::new(FIXTURE).join("tokenizer.json"), options)
        .expect("load fixture tokenizer")
}

pub fn fixture_json() -> Value {
    let text = std::fs::read_to_string(Path::new(FIXTURE).join("tokenizer.json"))
        .expect("read tokenizer.json");
    serde_json::from_str(&text).expect("parse tokenizer.json")
}

/// A temporary file that is removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// A file holding `value` as JSON, named after `tag`.
    pub fn json(tag: &str, value: &Value) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tokenizer-worker-test-{tag}-{}-{}.json",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, serde_json::to_vec(value).expect("serialize")).expect("write");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The fixture tokenizer with its post-processor removed, as older copies are.
pub fn base_tokenizer(options: TokenizerOptions) -> TextTokenizer {
    let mut json = fixture_json();
    json["post_processor"] = Value::Null;
    let file = TempFile::json("no-post-processor", &json);
    TextTokenizer::from_file(&file.0, options).expect("load base tokenizer")
}

pub fn assert_golden(tokenizer: &TextTokenizer, what: &str) {
    for case in cases() {
        let ids = tokenizer
            .encode(&case.text, case.kind, case.instruction.as_deref(), None)
            .unwrap_or_else(|err| panic!("{what}: case {}: {err}", case.id));
        assert_eq!(ids, case.input_ids, "{what}: case {}", case.id);
    }
}
