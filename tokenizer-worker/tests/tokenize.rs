//! Tokenization against the qwen3-tiny golden cases (ids from the Python `tokenizers` library
//! and transformers), with and without a post-processor that appends `<|endoftext|>`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::wire::{InputType, TruncationDirection};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokenizer_worker::tokenize::{
    DEFAULT_INSTRUCTION, TextTokenizer, TokenizeError, TokenizerOptions,
};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/qwen3-tiny"
);
const RERANKER_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/qwen3-tiny-reranker"
);
const EOT: u32 = 151643;

struct Case {
    id: String,
    text: String,
    kind: InputType,
    instruction: Option<String>,
    formatted: String,
    input_ids: Vec<u32>,
}

fn cases() -> &'static [Case] {
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

fn case(id: &str) -> &'static Case {
    cases()
        .iter()
        .find(|case| case.id == id)
        .unwrap_or_else(|| panic!("no case {id}"))
}

/// The fixture tokenizer (its post-processor appends `<|endoftext|>`), default options.
fn tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| with_options(TokenizerOptions::default()))
}

fn with_options(options: TokenizerOptions) -> TextTokenizer {
    TextTokenizer::from_file(&Path::new(FIXTURE).join("tokenizer.json"), options)
        .expect("load fixture tokenizer")
}

fn fixture_json() -> Value {
    let text = std::fs::read_to_string(Path::new(FIXTURE).join("tokenizer.json"))
        .expect("read tokenizer.json");
    serde_json::from_str(&text).expect("parse tokenizer.json")
}

/// A temporary file that is removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn json(tag: &str, value: &Value) -> Self {
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
fn base_tokenizer(options: TokenizerOptions) -> TextTokenizer {
    let mut json = fixture_json();
    json["post_processor"] = Value::Null;
    let file = TempFile::json("no-post-processor", &json);
    TextTokenizer::from_file(&file.0, options).expect("load base tokenizer")
}

fn assert_golden(tokenizer: &TextTokenizer, what: &str) {
    for case in cases() {
        let ids = tokenizer
            .encode(&case.text, case.kind, case.instruction.as_deref(), None)
            .unwrap_or_else(|err| panic!("{what}: case {}: {err}", case.id));
        assert_eq!(ids, case.input_ids, "{what}: case {}", case.id);
    }
}

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
