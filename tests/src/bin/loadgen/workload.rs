//! Deterministic pseudo-English workloads, turned into ready-to-send request bodies.

use anyhow::Result;
use bytes::Bytes;

use crate::api::Api;

/// Estimated tokens per whitespace-separated word.
pub const TOKENS_PER_WORD: f64 = 1.3;

/// Token lengths of one online query.
pub const QUERY_TOKENS: (u32, u32) = (8, 32);

/// Token lengths of one bulk document.
pub const DOC_TOKENS: (u32, u32) = (32, 512);

/// One request body, serialized before the clock starts.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The JSON body.
    pub body: Bytes,
    /// How many texts it holds (= vectors the answer must hold).
    pub inputs: usize,
    /// Estimated tokens of its texts (words * 1.3).
    pub est_tokens: f64,
}

/// SplitMix64: tiny, fast and stable across versions (unlike `rand`'s `StdRng`), so a seed
/// gives the same texts with every build.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`, on its own `stream` (independent sequences per use).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut mixer = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        Self(mixer.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u32, hi: u32) -> u32 {
        let span = u64::from(hi - lo) + 1;
        lo + ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as u32
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.between(0, items.len() as u32 - 1) as usize]
    }
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "that",
    "with",
    "on",
    "as",
    "by",
    "from",
    "an",
    "be",
    "this",
    "which",
    "or",
    "are",
    "it",
    "at",
    "was",
    "can",
    "not",
    "we",
    "more",
    "system",
    "model",
    "data",
    "query",
    "document",
    "search",
    "result",
    "vector",
    "network",
    "engine",
    "language",
    "embedding",
    "retrieval",
    "question",
    "answer",
    "time",
    "people",
    "water",
    "energy",
    "history",
    "science",
    "market",
    "country",
    "government",
    "research",
    "development",
    "information",
    "performance",
    "university",
    "environment",
    "temperature",
    "production",
    "application",
    "management",
    "community",
    "experience",
    "important",
    "different",
    "available",
    "following",
    "political",
    "economic",
    "several",
    "between",
    "through",
    "during",
    "without",
    "because",
    "however",
    "although",
    "within",
    "small",
    "large",
    "early",
    "recent",
    "local",
    "public",
    "simple",
    "strong",
    "quickly",
    "usually",
    "often",
    "describe",
    "explain",
    "compare",
    "improve",
    "measure",
    "support",
    "increase",
    "provide",
    "include",
    "require",
    "consider",
    "develop",
    "produce",
    "river",
    "mountain",
    "city",
    "health",
    "light",
    "music",
    "film",
    "computer",
    "software",
    "protein",
    "climate",
    "ocean",
    "policy",
    "price",
    "student",
    "teacher",
    "method",
    "process",
    "theory",
];

/// Pseudo-English text of exactly `words` whitespace-separated words, in sentences.
pub fn text(rng: &mut SplitMix64, words: u32) -> String {
    let mut out = String::with_capacity(words as usize * 8);
    let mut left_in_sentence = 0;
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        let word = rng.pick(WORDS);
        if left_in_sentence == 0 {
            left_in_sentence = rng.between(6, 16);
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        } else {
            out.push_str(word);
        }
        left_in_sentence -= 1;
        if left_in_sentence == 0 || i + 1 == words {
            out.push('.');
            left_in_sentence = 0;
        }
    }
    out
}

/// Estimated tokens of `text`: whitespace-separated words * 1.3.
pub fn estimate_tokens(text: &str) -> f64 {
    text.split_whitespace().count() as f64 * TOKENS_PER_WORD
}

/// `count` texts whose estimated token counts lie within `tokens` (inclusive), uniformly
/// spread by word count.
pub fn texts(rng: &mut SplitMix64, count: usize, tokens: (u32, u32)) -> Vec<String> {
    let min_words = (f64::from(tokens.0) / TOKENS_PER_WORD).ceil() as u32;
    let max_words = (f64::from(tokens.1) / TOKENS_PER_WORD).floor() as u32;
    let max_words = max_words.max(min_words).max(1);
    (0..count)
        .map(|_| {
            let words = rng.between(min_words.max(1), max_words);
            text(rng, words)
        })
        .collect()
}

/// Request bodies of `batch` texts each (the last may be shorter), in order.
pub fn prepare(
    api: Api,
    model: Option<&str>,
    is_query: bool,
    texts: &[String],
    batch: usize,
) -> Result<Vec<Prepared>> {
    texts
        .chunks(batch.max(1))
        .map(|chunk| {
            Ok(Prepared {
                body: api.request_body(chunk, model, is_query)?,
                inputs: chunk.len(),
                est_tokens: chunk.iter().map(|t| estimate_tokens(t)).sum(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_range(texts: &[String], (lo, hi): (u32, u32)) -> bool {
        texts.iter().all(|t| {
            let est = estimate_tokens(t);
            est >= f64::from(lo) && est <= f64::from(hi)
        })
    }

    #[test]
    fn query_and_doc_lengths_stay_in_range() {
        let mut rng = SplitMix64::new(7, 0);
        let queries = texts(&mut rng, 5000, QUERY_TOKENS);
        assert!(in_range(&queries, QUERY_TOKENS));
        let docs = texts(&mut rng, 2000, DOC_TOKENS);
        assert!(in_range(&docs, DOC_TOKENS));
        // Spread over the range, not bunched at one end.
        let words: Vec<usize> = docs.iter().map(|d| d.split_whitespace().count()).collect();
        assert!(words.iter().any(|&w| w < 60) && words.iter().any(|&w| w > 350));
    }

    #[test]
    fn same_seed_same_texts_other_seed_other_texts() {
        let a = texts(&mut SplitMix64::new(42, 1), 100, QUERY_TOKENS);
        let b = texts(&mut SplitMix64::new(42, 1), 100, QUERY_TOKENS);
        let c = texts(&mut SplitMix64::new(43, 1), 100, QUERY_TOKENS);
        let d = texts(&mut SplitMix64::new(42, 2), 100, QUERY_TOKENS);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn text_has_exact_word_count_and_ends_a_sentence() {
        let mut rng = SplitMix64::new(1, 0);
        for words in [1, 2, 7, 31, 400] {
            let t = text(&mut rng, words);
            assert_eq!(t.split_whitespace().count(), words as usize);
            assert!(t.ends_with('.'));
            assert!(t.chars().next().is_some_and(char::is_uppercase));
        }
    }

    #[test]
    fn prepare_batches_every_text_once() {
        let mut rng = SplitMix64::new(3, 0);
        let docs = texts(&mut rng, 70, DOC_TOKENS);
        let bodies = prepare(Api::Openai, None, false, &docs, 32).unwrap();
        let sizes: Vec<usize> = bodies.iter().map(|b| b.inputs).collect();
        assert_eq!(sizes, [32, 32, 6]);
        let est: f64 = bodies.iter().map(|b| b.est_tokens).sum();
        let want: f64 = docs.iter().map(|d| estimate_tokens(d)).sum();
        assert!((est - want).abs() < 1e-6);
    }
}
