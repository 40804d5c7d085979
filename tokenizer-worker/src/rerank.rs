//! The Qwen3-Reranker prompt: formatting and tokenization of one (query, document) pair.
//!
//! The official recipe builds the prompt from three parts, each tokenized separately
//! **without special tokens** and concatenated:
//!
//! 1. [`SYSTEM_PREFIX`]: the system turn and the opening of the user turn;
//! 2. the user content `<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}`
//!    ([`user_content`]);
//! 3. [`ASSISTANT_SUFFIX`]: the end of the user turn and an assistant turn with an empty think
//!    block, after which the model's next token is `yes` or `no`.
//!
//! Added tokens (`<|im_start|>`, `<|im_end|>`) are still recognized inside the text, as the
//! Hugging Face tokenizer does with `add_special_tokens=False`.
//!
//! Over the length limit, only the **document** is shortened (never the template, the
//! instruction or the query), and only when the caller asks for truncation; otherwise the
//! error names the lengths. A shortened document is cut at a token boundary and the user
//! content is tokenized again, so the ids are always exactly those of a formatted pair.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

/// System turn and the opening of the user turn, tokenized on its own.
pub const SYSTEM_PREFIX: &str = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n";

/// End of the user turn and the assistant turn with an empty think block, tokenized on its own.
pub const ASSISTANT_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";

/// Task description used for pairs that carry no instruction of their own.
pub const DEFAULT_RERANK_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";

/// Token limit of the official Qwen3-Reranker code (template included).
pub const DEFAULT_RERANK_MAX_LENGTH: usize = 8192;

/// The user content of the prompt up to (and including) `<Document>: `; the document follows.
fn user_head(instruction: &str, query: &str) -> String {
    format!("<Instruct>: {instruction}\n<Query>: {query}\n<Document>: ")
}

/// The user content of the prompt: `<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}`.
pub fn user_content(instruction: &str, query: &str, document: &str) -> String {
    let mut text = user_head(instruction, query);
    text.push_str(document);
    text
}

/// Failure to load the reranker tokenizer or to encode a pair.
#[derive(Debug, thiserror::Error)]
pub enum RerankTemplateError {
    /// `tokenizer.json` could not be read or parsed.
    #[error("cannot load tokenizer from {path}: {source}")]
    Load {
        /// The file that was read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: tokenizers::Error,
    },
    /// The tokenizer library failed on a text.
    #[error("tokenizer failed: {0}")]
    Tokenizer(#[source] tokenizers::Error),
    /// The pair is longer than the limit and truncation is off.
    #[error(
        "reranker input has {tokens} tokens ({template} of template, instruction and query, \
         {document} of document), more than the limit of {max} tokens"
    )]
    TooLong {
        /// Tokens of the whole prompt.
        tokens: usize,
        /// Tokens outside the document (system prefix, instruction, query, suffix).
        template: usize,
        /// Tokens of the document.
        document: usize,
        /// The configured limit.
        max: usize,
    },
    /// Even with an empty document the prompt exceeds the limit: the template, instruction and
    /// query are never truncated.
    #[error(
        "reranker template, instruction and query take {tokens} tokens with an empty document, \
         more than the limit of {max} tokens; only the document can be truncated"
    )]
    QueryTooLong {
        /// Tokens of the prompt with an empty document.
        tokens: usize,
        /// The configured limit.
        max: usize,
    },
    /// The options are out of range.
    #[error("invalid reranker options: {0}")]
    InvalidOptions(String),
}

/// How pairs are formatted and how long a prompt may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerankOptions {
    /// Task description for pairs that carry none; [`DEFAULT_RERANK_INSTRUCTION`] by default.
    pub default_instruction: String,
    /// Most tokens per prompt, template included; [`DEFAULT_RERANK_MAX_LENGTH`] by default.
    /// The caller's configuration keeps it within the model's `max_position_embeddings`.
    pub max_length: usize,
}

impl Default for RerankOptions {
    fn default() -> Self {
        Self {
            default_instruction: DEFAULT_RERANK_INSTRUCTION.to_owned(),
            max_length: DEFAULT_RERANK_MAX_LENGTH,
        }
    }
}

/// The token ids of one formatted pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerankEncoding {
    /// Prefix, user content and suffix ids, concatenated.
    pub ids: Vec<u32>,
    /// Whether the document was shortened to fit the limit.
    pub truncated: bool,
}

/// The Qwen3-Reranker prompt builder: formats a (query, document, instruction) triple and
/// tokenizes it as the official recipe does.
///
/// It is `Send + Sync` and every method takes `&self`: share one behind an `Arc`.
#[derive(Debug, Clone)]
pub struct RerankTemplate {
    /// The Hugging Face tokenizer, with its own truncation and padding switched off.
    inner: Tokenizer,
    /// [`SYSTEM_PREFIX`] tokenized once at load.
    prefix_ids: Vec<u32>,
    /// [`ASSISTANT_SUFFIX`] tokenized once at load.
    suffix_ids: Vec<u32>,
    /// Validated options.
    options: RerankOptions,
}

impl RerankTemplate {
    /// Loads `tokenizer.json` from `path`.
    pub fn from_file(path: &Path, options: RerankOptions) -> Result<Self, RerankTemplateError> {
        let inner = Tokenizer::from_file(path).map_err(|source| RerankTemplateError::Load {
            path: path.to_owned(),
            source,
        })?;
        Self::new(inner, options)
    }

    /// Wraps an already loaded tokenizer (its own truncation and padding are switched off)
    /// and tokenizes the fixed parts of the template. Fails when `max_length` cannot hold
    /// the fixed parts.
    pub fn new(mut inner: Tokenizer, options: RerankOptions) -> Result<Self, RerankTemplateError> {
        inner
            .with_truncation(None)
            .map_err(RerankTemplateError::Tokenizer)?;
        inner.with_padding(None);
        let ids = |text: &str| -> Result<Vec<u32>, RerankTemplateError> {
            Ok(inner
                .encode_fast(text, false)
                .map_err(RerankTemplateError::Tokenizer)?
                .get_ids()
                .to_vec())
        };
        let prefix_ids = ids(SYSTEM_PREFIX)?;
        let suffix_ids = ids(ASSISTANT_SUFFIX)?;
        let fixed = prefix_ids.len() + suffix_ids.len();
        if options.max_length <= fixed {
            return Err(RerankTemplateError::InvalidOptions(format!(
                "max_length {} cannot hold the {fixed} tokens of the template and any content",
                options.max_length
            )));
        }
        Ok(Self {
            inner,
            prefix_ids,
            suffix_ids,
            options,
        })
    }

    /// Ids of [`SYSTEM_PREFIX`].
    pub fn prefix_ids(&self) -> &[u32] {
        &self.prefix_ids
    }

    /// Ids of [`ASSISTANT_SUFFIX`].
    pub fn suffix_ids(&self) -> &[u32] {
        &self.suffix_ids
    }

    /// Most tokens per prompt, template included.
    pub fn max_length(&self) -> usize {
        self.options.max_length
    }

    /// Task description used for pairs without an instruction.
    pub fn default_instruction(&self) -> &str {
        &self.options.default_instruction
    }

    /// Tokenizes a text without special tokens, with byte offsets.
    fn encode_text(&self, text: &str) -> Result<tokenizers::Encoding, RerankTemplateError> {
        self.inner
            .encode(text, false)
            .map_err(RerankTemplateError::Tokenizer)
    }

    /// Prefix, then `user`, then suffix.
    fn assemble(&self, user: &[u32]) -> Vec<u32> {
        let mut ids =
            Vec::with_capacity(self.prefix_ids.len() + user.len() + self.suffix_ids.len());
        ids.extend_from_slice(&self.prefix_ids);
        ids.extend_from_slice(user);
        ids.extend_from_slice(&self.suffix_ids);
        ids
    }

    /// Formats and tokenizes one pair (the default instruction when `instruction` is `None`).
    ///
    /// When the prompt is longer than [`max_length`](Self::max_length): with `truncate` the
    /// document is shortened (at a token boundary, then the user content is tokenized again)
    /// until it fits; without it the result is [`RerankTemplateError::TooLong`]. The template,
    /// instruction and query are never shortened: if they alone exceed the limit the result is
    /// [`RerankTemplateError::QueryTooLong`].
    pub fn encode(
        &self,
        query: &str,
        document: &str,
        instruction: Option<&str>,
        truncate: bool,
    ) -> Result<RerankEncoding, RerankTemplateError> {
        let instruction = instruction.unwrap_or(&self.options.default_instruction);
        let user = user_content(instruction, query, document);
        let encoding = self.encode_text(&user)?;
        let fixed = self.prefix_ids.len() + self.suffix_ids.len();
        let max = self.options.max_length;
        let tokens = fixed + encoding.len();
        if tokens <= max {
            return Ok(RerankEncoding {
                ids: self.assemble(encoding.get_ids()),
                truncated: false,
            });
        }

        // Tokens wholly before the document belong to the head; the rest reach into it.
        let doc_start = user.len() - document.len();
        let offsets = encoding.get_offsets();
        let head_tokens = offsets
            .iter()
            .take_while(|&&(_, end)| end <= doc_start)
            .count();
        if !truncate {
            return Err(RerankTemplateError::TooLong {
                tokens,
                template: fixed + head_tokens,
                document: encoding.len() - head_tokens,
                max,
            });
        }
        let empty = fixed + self.encode_text(&user[..doc_start])?.len();
        if empty > max {
            return Err(RerankTemplateError::QueryTooLong { tokens: empty, max });
        }

        // Keep the first `keep` document tokens: cut the text where the last kept one ends and
        // tokenize again (the join can merge differently); shrink until it fits. With `keep`
        // at zero the document is empty, which fits (checked above), so this terminates.
        let mut keep = max.saturating_sub(fixed + head_tokens);
        loop {
            let mut cut = match keep.checked_sub(1) {
                Some(last) => offsets
                    .get(head_tokens + last)
                    .map_or(user.len(), |&(_, end)| end),
                None => doc_start,
            }
            .clamp(doc_start, user.len());
            while !user.is_char_boundary(cut) {
                cut -= 1;
            }
            let shortened = self.encode_text(&user[..cut])?;
            let tokens = fixed + shortened.len();
            if tokens <= max {
                return Ok(RerankEncoding {
                    ids: self.assemble(shortened.get_ids()),
                    truncated: true,
                });
            }
            if keep == 0 {
                // Unreachable: the empty document was checked to fit.
                return Err(RerankTemplateError::QueryTooLong { tokens, max });
            }
            keep = keep.saturating_sub(tokens - max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn template_is_send_and_sync() {
        assert_send_sync::<RerankTemplate>();
        assert_send_sync::<RerankTemplateError>();
    }

    #[test]
    fn user_content_layout() {
        assert_eq!(
            user_content("I", "q", "d"),
            "<Instruct>: I\n<Query>: q\n<Document>: d"
        );
        assert_eq!(
            user_content("I", "q", ""),
            "<Instruct>: I\n<Query>: q\n<Document>: "
        );
    }
}
