//! The default query head (the instruction template's tokens) tokenized once and reused:
//! the ids are those of the whole query, with truncation, and where splitting would change
//! them the query is tokenized whole; random tricky texts.

mod support;

use std::path::Path;
use std::sync::OnceLock;

use common::wire::{InputType, TruncationDirection};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::*;
use tokenizer_worker::tokenize::{DEFAULT_INSTRUCTION, TextTokenizer, TokenizerOptions};

/// The ids of the whole formatted text from the Hugging Face tokenizer itself, the final
/// `<|endoftext|>` appended by the fixture's post-processor.
fn whole_ids(tokenizer: &TextTokenizer, text: &str) -> Vec<u32> {
    static HF: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    let hf = HF.get_or_init(|| {
        tokenizers::Tokenizer::from_file(Path::new(FIXTURE).join("tokenizer.json"))
            .expect("load the fixture tokenizer")
    });
    let formatted = tokenizer.format(text, InputType::Query, None);
    hf.encode_fast(formatted.as_ref(), true)
        .expect("encode")
        .get_ids()
        .to_vec()
}

/// A random text of characters chosen to sit at pre-token and normalization boundaries.
fn tricky_text(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        " ",
        "  ",
        "\n",
        "\r\n",
        "\t",
        ":",
        "'s",
        "'",
        "!",
        "?",
        ".",
        "-",
        "a",
        "Query",
        "word",
        "Z",
        "0",
        "42",
        "é",
        "e\u{301}",
        "\u{301}",
        "中",
        "文",
        "😀",
        "Ж",
        "<|endoftext|>",
        "<|im_start|>",
        "\u{a0}",
        "\u{200b}",
    ];
    let len = rng.random_range(0..12);
    (0..len)
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

#[test]
fn default_query_head_reused_gives_the_ids_of_the_whole_query() {
    for (what, tokenizer) in [
        ("fixture", tokenizer().clone()),
        (
            "no post-processor",
            base_tokenizer(TokenizerOptions::default()),
        ),
    ] {
        assert!(tokenizer.reuses_default_query_head(), "{what}");
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..3000 {
            let text = tricky_text(&mut rng);
            let ids = tokenizer
                .encode(&text, InputType::Query, None, None)
                .expect("encode");
            // Both tokenizers give the ids of the fixture's, which appends `<|endoftext|>`.
            assert_eq!(ids, whole_ids(&tokenizer, &text), "{what}: query {text:?}");
            // The default instruction given explicitly takes the same path.
            let explicit = tokenizer
                .encode(&text, InputType::Query, Some(DEFAULT_INSTRUCTION), None)
                .expect("encode");
            assert_eq!(explicit, ids, "{what}: query {text:?}");
        }
    }
}

#[test]
fn truncation_can_end_inside_the_reused_query_head() {
    let web = case("query_web_1");
    let head_len = tokenizer()
        .encode("", InputType::Query, None, None)
        .expect("encode")
        .len()
        - 1;
    for max_length in [2, head_len - 3, head_len, head_len + 2] {
        let tokenizer = with_options(TokenizerOptions {
            max_length,
            ..TokenizerOptions::default()
        });
        let ids = tokenizer
            .encode(
                &web.text,
                InputType::Query,
                None,
                Some(TruncationDirection::Right),
            )
            .expect("truncated");
        let mut expected = web.input_ids[..max_length - 1].to_vec();
        expected.push(EOT);
        assert_eq!(ids, expected, "max_length {max_length}");
    }
}

#[test]
fn query_head_is_tokenized_whole_when_a_split_would_change_the_ids() {
    // A post-processor that puts a token in front of the sequence: the head tokenized apart
    // would come before it, so the load-time check must turn the reuse off.
    let mut json = fixture_json();
    json["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}
        ],
        "pair": [
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}}
        ],
        "special_tokens": {
            "<|im_start|>": {"id": "<|im_start|>", "ids": [151644], "tokens": ["<|im_start|>"]},
            "<|endoftext|>": {"id": "<|endoftext|>", "ids": [151643], "tokens": ["<|endoftext|>"]}
        }
    });
    let file = TempFile::json("leading-token", &json);
    let tokenizer =
        TextTokenizer::from_file(&file.0, TokenizerOptions::default()).expect("load tokenizer");
    assert!(!tokenizer.reuses_default_query_head());
    let web = case("query_web_1");
    let ids = tokenizer
        .encode(&web.text, InputType::Query, None, None)
        .expect("encode");
    assert_eq!(ids[0], 151644);
    assert_eq!(ids[1..], web.input_ids[..]);
}
