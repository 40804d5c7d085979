//! Query template, tokenization and truncation for Qwen3-Embedding.
//!
//! Every sequence the model reads ends with `<|endoftext|>` (the pooling token). The published
//! Qwen3-Embedding `tokenizer.json` appends it in its post-processor; older copies (and the
//! base Qwen3 tokenizer) append nothing. [`TextTokenizer`] finds out which at load time and
//! appends exactly one `<|endoftext|>` when the post-processor does not. The decision is made
//! once, from the post-processor, never from the last id of a given text: the text
//! `"<|endoftext|>"` itself encodes to `[151643, 151643]` (the added token, then the appended
//! one), as transformers does.
//!
//! Truncation works on the ids of the whole text, so the ids kept are always the tokenizer's
//! own: on the right the first `max_length - 1` ids are kept, on the left the last ones, and
//! for a query the template (`Instruct: {instruction}\nQuery:`) is never cut, only the text
//! after it. Either way the sequence ends with `<|endoftext|>`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use common::wire::InputType;
use common::wire::TruncationDirection;
use common::wire::tokenize::{TokenSpan, TokenizedText};
use tokenizers::Tokenizer;

/// The token every sequence ends with and whose hidden state is pooled.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Task description used for queries that carry no instruction of their own.
pub const DEFAULT_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";

/// Qwen3-Embedding's context length (`max_position_embeddings` in its `config.json`): the
/// token limit when none is given.
pub const DEFAULT_MAX_LENGTH: usize = 32768;

/// Text encoded at load time to find out whether the post-processor appends `<|endoftext|>`.
const PROBE_TEXT: &str = "a";

/// Query texts (after `Query:`) on which the default instruction's head, tokenized apart, is
/// checked at load against tokenizing the whole query: starts that could join the preceding
/// characters in a pre-tokenizer or a normalizer (spaces, line breaks, punctuation, digits,
/// letters of several scripts, combining marks, an added token).
const HEAD_PROBES: &[&str] = &[
    "",
    "a",
    "what is rust",
    " leading space",
    "  two spaces",
    "\nline",
    "\r\n",
    "\t tab",
    "'s",
    "!?",
    ":colon",
    "123",
    "\u{301}accent",
    "é",
    "中文查询",
    "Привет",
    "😀 emoji",
    "<|endoftext|>",
    "Query:",
];

/// Failure to load a tokenizer or to encode a text.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// `tokenizer.json` could not be read or parsed.
    #[error("cannot load tokenizer from {path}: {source}")]
    Load {
        /// The file that was read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: tokenizers::Error,
    },
    /// The vocabulary has no `<|endoftext|>` token, so sequences cannot be terminated.
    #[error("tokenizer has no {END_OF_TEXT} token")]
    MissingEndOfText,
    /// The tokenizer library failed on a text.
    #[error("tokenizer failed: {0}")]
    Tokenizer(#[source] tokenizers::Error),
    /// The text has more tokens than allowed and truncation is off.
    #[error("input has {tokens} tokens, more than the limit of {max} tokens")]
    TooLong {
        /// Tokens of the whole sequence, `<|endoftext|>` included.
        tokens: usize,
        /// The configured limit.
        max: usize,
    },
    /// Left truncation keeps a query's template whole, and the template alone takes all the
    /// tokens the limit allows.
    #[error(
        "the query template (instruction included) takes {tokens} tokens, leaving none of the \
         limit of {max} tokens for the text; shorten the instruction"
    )]
    TemplateTooLong {
        /// Tokens of the template.
        tokens: usize,
        /// The configured limit.
        max: usize,
    },
    /// An id to decode is not in the vocabulary.
    #[error("token id {id} is not in the vocabulary of {vocab_size} tokens")]
    UnknownId {
        /// The id.
        id: u32,
        /// Ids run from 0 to one less than this.
        vocab_size: usize,
    },
    /// The options are out of range.
    #[error("invalid tokenizer options: {0}")]
    InvalidOptions(String),
}

/// How texts are formatted and how long they may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerOptions {
    /// Task description for queries that carry none; [`DEFAULT_INSTRUCTION`] by default.
    pub default_instruction: String,
    /// Most tokens per sequence, `<|endoftext|>` included; at least 2 (one token of text and
    /// the final `<|endoftext|>`). The caller's configuration keeps it within the model's
    /// `max_position_embeddings`. [`DEFAULT_MAX_LENGTH`] by default.
    pub max_length: usize,
}

impl Default for TokenizerOptions {
    fn default() -> Self {
        Self {
            default_instruction: DEFAULT_INSTRUCTION.to_owned(),
            max_length: DEFAULT_MAX_LENGTH,
        }
    }
}

impl TokenizerOptions {
    /// Checks the ranges that do not depend on the model.
    pub fn validate(&self) -> Result<(), TokenizeError> {
        if self.max_length < 2 {
            return Err(TokenizeError::InvalidOptions(format!(
                "max_length must be at least 2 (one token and {END_OF_TEXT}), got {}",
                self.max_length
            )));
        }
        Ok(())
    }
}

/// A Qwen3-Embedding tokenizer: applies the query template, tokenizes, makes sure the sequence
/// ends with exactly one appended `<|endoftext|>`, and enforces the token limit.
///
/// It is `Send + Sync` and every method takes `&self`: share one behind an `Arc` across a pool
/// of blocking threads.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    /// The Hugging Face tokenizer, with its own truncation and padding switched off.
    inner: Tokenizer,
    /// Id of `<|endoftext|>` (151643 in Qwen3).
    eot_id: u32,
    /// Whether the post-processor appends `<|endoftext|>` (Qwen3-Embedding) or not (base
    /// Qwen3 and older copies), detected once at load.
    post_processor_appends_eot: bool,
    /// `Instruct: {default_instruction}\n` tokenized once at load, put in front of the rest
    /// of every query with the default instruction (the instruction is most of a short
    /// query's tokens); `None` when tokenizing it apart changed the ids of a load-time probe.
    default_query_head: Option<Vec<u32>>,
    /// Validated options.
    options: TokenizerOptions,
}

/// What follows the head in a query's text, right before the query itself.
const QUERY_LABEL: &str = "Query:";

/// The part of a query's text before [`QUERY_LABEL`].
fn query_head(instruction: &str) -> String {
    format!("Instruct: {instruction}\n")
}

/// The ids of `head` (no special tokens) when, for every probe, they followed by the ids of
/// `Query:{probe}` (special tokens added) are the ids of the whole `{head}Query:{probe}`;
/// `None` otherwise. A line break ends a pre-token in Qwen3's tokenizer, so the split holds
/// there, but this is checked rather than assumed for whatever `tokenizer.json` is loaded.
fn split_head(inner: &Tokenizer, head: &str) -> Result<Option<Vec<u32>>, TokenizeError> {
    let ids = |text: &str, special: bool| -> Result<Vec<u32>, TokenizeError> {
        Ok(inner
            .encode_fast(text, special)
            .map_err(TokenizeError::Tokenizer)?
            .get_ids()
            .to_vec())
    };
    let head_ids = ids(head, false)?;
    for probe in HEAD_PROBES {
        let whole = ids(&format!("{head}{QUERY_LABEL}{probe}"), true)?;
        let tail = ids(&format!("{QUERY_LABEL}{probe}"), true)?;
        if whole != [head_ids.as_slice(), &tail].concat() {
            return Ok(None);
        }
    }
    Ok(Some(head_ids))
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from `path`.
    pub fn from_file(path: &Path, options: TokenizerOptions) -> Result<Self, TokenizeError> {
        let inner = Tokenizer::from_file(path).map_err(|source| TokenizeError::Load {
            path: path.to_owned(),
            source,
        })?;
        Self::new(inner, options)
    }

    /// Wraps an already loaded tokenizer. Its own truncation and padding settings are
    /// switched off: the limit is enforced here, keeping the final `<|endoftext|>`.
    pub fn new(mut inner: Tokenizer, options: TokenizerOptions) -> Result<Self, TokenizeError> {
        options.validate()?;
        inner
            .with_truncation(None)
            .map_err(TokenizeError::Tokenizer)?;
        inner.with_padding(None);
        let eot_id = inner
            .token_to_id(END_OF_TEXT)
            .ok_or(TokenizeError::MissingEndOfText)?;
        let with_special = inner
            .encode_fast(PROBE_TEXT, true)
            .map_err(TokenizeError::Tokenizer)?;
        let without_special = inner
            .encode_fast(PROBE_TEXT, false)
            .map_err(TokenizeError::Tokenizer)?;
        let post_processor_appends_eot = with_special.get_ids().last() == Some(&eot_id)
            && without_special.get_ids().last() != Some(&eot_id);
        let default_query_head = split_head(&inner, &query_head(&options.default_instruction))?;
        Ok(Self {
            inner,
            eot_id,
            post_processor_appends_eot,
            default_query_head,
            options,
        })
    }

    /// Id of `<|endoftext|>`, the last token of every sequence.
    pub fn eot_id(&self) -> u32 {
        self.eot_id
    }

    /// Most tokens per sequence, `<|endoftext|>` included.
    pub fn max_length(&self) -> usize {
        self.options.max_length
    }

    /// Task description used for queries without an instruction.
    pub fn default_instruction(&self) -> &str {
        &self.options.default_instruction
    }

    /// Whether the tokenizer's post-processor appends `<|endoftext|>` itself (the published
    /// Qwen3-Embedding tokenizer does; base Qwen3 copies do not, and then it is appended here).
    pub fn post_processor_appends_eot(&self) -> bool {
        self.post_processor_appends_eot
    }

    /// Whether queries with the default instruction reuse its ids tokenized at load (the
    /// tokenizer's rules allowed it on every load-time probe).
    pub fn reuses_default_query_head(&self) -> bool {
        self.default_query_head.is_some()
    }

    /// The text the tokenizer reads: `Instruct: {instruction}\nQuery:{text}` for queries (no
    /// space after `Query:`; the default instruction when `instruction` is `None`), the text
    /// itself for documents.
    pub fn format<'a>(
        &self,
        text: &'a str,
        kind: InputType,
        instruction: Option<&str>,
    ) -> Cow<'a, str> {
        match kind {
            InputType::Document => Cow::Borrowed(text),
            InputType::Query => {
                let instruction = instruction.unwrap_or(&self.options.default_instruction);
                Cow::Owned(format!("{}{QUERY_LABEL}{text}", query_head(instruction)))
            }
        }
    }

    /// Ids already known for the start of the formatted text, and the rest of it to tokenize:
    /// a query with the default instruction starts with the head tokenized at load.
    fn split<'a>(
        &self,
        text: &'a str,
        kind: InputType,
        instruction: Option<&str>,
    ) -> (&[u32], Cow<'a, str>) {
        let default = instruction.is_none_or(|given| given == self.options.default_instruction);
        match (&self.default_query_head, kind) {
            (Some(head), InputType::Query) if default => {
                (head, Cow::Owned(format!("{QUERY_LABEL}{text}")))
            }
            _ => (&[], self.format(text, kind, instruction)),
        }
    }

    /// Formats and tokenizes one text; the ids end with exactly one appended `<|endoftext|>`.
    ///
    /// When the sequence is longer than [`max_length`](Self::max_length): with `truncate`
    /// `Right`, the first `max_length - 1` tokens and the final `<|endoftext|>` are kept; with
    /// `Left`, the template's tokens (a query's `Instruct: ...\nQuery:`, nothing for a
    /// document), the last tokens of the text and the final `<|endoftext|>`; with `None`, the
    /// result is [`TokenizeError::TooLong`].
    pub fn encode(
        &self,
        text: &str,
        kind: InputType,
        instruction: Option<&str>,
        truncate: Option<TruncationDirection>,
    ) -> Result<Vec<u32>, TokenizeError> {
        let (head, rest) = self.split(text, kind, instruction);
        // `encode_fast` skips the offsets, which are not needed; the ids are the same.
        let encoding = self
            .inner
            .encode_fast(rest.as_ref(), true)
            .map_err(TokenizeError::Tokenizer)?;
        let body = self.body(encoding.get_ids());
        let max = self.options.max_length;
        let tokens = head.len() + body.len() + 1;
        let mut out = Vec::with_capacity(tokens.min(max));
        match truncate {
            _ if tokens <= max => out.extend(head.iter().chain(body)),
            None => return Err(TokenizeError::TooLong { tokens, max }),
            Some(TruncationDirection::Right) => {
                out.extend(head.iter().chain(body).take(max - 1));
            }
            Some(TruncationDirection::Left) => {
                let template = head.len() + self.template_tokens(&rest, kind, head.len())?;
                if template >= max - 1 {
                    return Err(TokenizeError::TemplateTooLong {
                        tokens: template,
                        max,
                    });
                }
                let cut = tokens - max;
                out.extend(head.iter().chain(body).take(template));
                out.extend(head.iter().chain(body).skip(template + cut));
            }
        }
        out.push(self.eot_id);
        Ok(out)
    }

    /// The ids of a text without the `<|endoftext|>` the post-processor appends (it is put
    /// back by the caller).
    fn body<'a>(&self, ids: &'a [u32]) -> &'a [u32] {
        if self.post_processor_appends_eot {
            &ids[..ids.len().saturating_sub(1)]
        } else {
            ids
        }
    }

    /// How many of the first ids of `rest` (what follows `head_len` ids known from load) are
    /// the query template's: those starting before the end of `...Query:`. Tokenizes `rest`
    /// again, with offsets; only over-long queries cut on the left get here.
    fn template_tokens(
        &self,
        rest: &str,
        kind: InputType,
        head_len: usize,
    ) -> Result<usize, TokenizeError> {
        if kind == InputType::Document {
            return Ok(0);
        }
        // `rest` is `Query:{text}` after a head known from load, the whole formatted query
        // otherwise; either way the template ends right after the first `Query:`.
        let template_end = if head_len > 0 {
            QUERY_LABEL.len()
        } else {
            rest.find(&format!("\n{QUERY_LABEL}"))
                .map_or(0, |at| at + 1 + QUERY_LABEL.len())
        };
        let encoding = self
            .inner
            .encode(rest, true)
            .map_err(TokenizeError::Tokenizer)?;
        Ok(encoding
            .get_offsets()
            .iter()
            .take_while(|(start, _)| *start < template_end)
            .count())
    }

    /// The ids the model reads for `text` (template and, with `add_special_tokens`, the final
    /// `<|endoftext|>`), never truncated; with `return_tokens` also each token's text, whether
    /// it is special and its byte offsets in the formatted text.
    pub fn tokens(
        &self,
        text: &str,
        kind: InputType,
        instruction: Option<&str>,
        add_special_tokens: bool,
        return_tokens: bool,
    ) -> Result<TokenizedText, TokenizeError> {
        // The same ids as `encode` (the head known from load included), never cut.
        let (head, rest) = self.split(text, kind, instruction);
        let encoding = self
            .inner
            .encode_fast(rest.as_ref(), true)
            .map_err(TokenizeError::Tokenizer)?;
        let body = self.body(encoding.get_ids());
        let mut ids = [head, body, &[self.eot_id]].concat();
        if !return_tokens {
            if !add_special_tokens {
                ids.pop();
            }
            return Ok(TokenizedText {
                ids,
                tokens: Vec::new(),
            });
        }
        let formatted = self.format(text, kind, instruction);
        let (whole_ids, offsets) = self.whole(&formatted)?;
        if whole_ids != ids {
            // The load-time check of the head makes this impossible for the probed texts;
            // should a text still tokenize differently whole, its offsets would not fit.
            return Err(TokenizeError::InvalidOptions(
                "the query head tokenized apart changes this text's ids; offsets are not \
                 available for it"
                    .into(),
            ));
        }
        let specials = self.special_ids();
        let last = ids.len() - 1;
        let mut tokens: Vec<TokenSpan> = ids
            .iter()
            .zip(&offsets)
            .enumerate()
            .map(|(at, (id, (start, stop)))| {
                if at == last {
                    // The final `<|endoftext|>` is the model's, not the text's.
                    return TokenSpan {
                        text: END_OF_TEXT.to_owned(),
                        special: true,
                        start: None,
                        stop: None,
                    };
                }
                TokenSpan {
                    text: formatted.get(*start..*stop).unwrap_or_default().to_owned(),
                    special: specials.contains(id),
                    start: u32::try_from(*start).ok(),
                    stop: u32::try_from(*stop).ok(),
                }
            })
            .collect();
        if !add_special_tokens {
            ids.pop();
            tokens.pop();
        }
        Ok(TokenizedText { ids, tokens })
    }

    /// The ids of the whole `formatted` text ending with exactly one appended
    /// `<|endoftext|>`, and their byte offsets (those of the appended one are `(0, 0)`).
    fn whole(
        &self,
        formatted: &str,
    ) -> Result<(Vec<u32>, Vec<tokenizers::Offsets>), TokenizeError> {
        let encoding = self
            .inner
            .encode(formatted, true)
            .map_err(TokenizeError::Tokenizer)?;
        let mut ids = encoding.get_ids().to_vec();
        let mut offsets = encoding.get_offsets().to_vec();
        if !self.post_processor_appends_eot {
            ids.push(self.eot_id);
            offsets.push((0, 0));
        }
        Ok((ids, offsets))
    }

    /// Ids of the special added tokens (`<|endoftext|>`, `<|im_start|>`, ...).
    fn special_ids(&self) -> Vec<u32> {
        self.inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect()
    }

    /// The text of `ids`, leaving special tokens out when `skip_special_tokens`; an id
    /// outside the vocabulary is refused by value.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizeError> {
        let vocab_size = self.inner.get_vocab_size(true);
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(TokenizeError::UnknownId { id, vocab_size });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(TokenizeError::Tokenizer)
    }

    /// Encodes several texts of one request (same kind, instruction and truncation), one
    /// result per text, in order. Runs on the calling thread: parallelism is the caller's
    /// thread pool's business.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        kind: InputType,
        instruction: Option<&str>,
        truncate: Option<TruncationDirection>,
    ) -> Vec<Result<Vec<u32>, TokenizeError>> {
        texts
            .iter()
            .map(|text| self.encode(text.as_ref(), kind, instruction, truncate))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn text_tokenizer_is_send_and_sync() {
        assert_send_sync::<TextTokenizer>();
        assert_send_sync::<TokenizeError>();
    }

    #[test]
    fn options_below_two_tokens_are_rejected() {
        let options = TokenizerOptions {
            max_length: 1,
            ..TokenizerOptions::default()
        };
        let err = options
            .validate()
            .expect_err("max_length 1 must be rejected");
        assert!(err.to_string().contains("got 1"), "{err}");
        assert!(TokenizerOptions::default().validate().is_ok());
        assert_eq!(TokenizerOptions::default().max_length, 32768);
    }
}
