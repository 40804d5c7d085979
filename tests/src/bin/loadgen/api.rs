//! The HTTP API shapes loadgen speaks: request bodies and answer checks.

use anyhow::Result;
use bytes::Bytes;
use clap::ValueEnum;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The embedding API shape of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// OpenAI: POST /v1/embeddings {"input": [...], "model"?}, answer {"data": [{"embedding"}]}.
    Openai,
    /// This project's seed API: POST /api/v1/embedding/api {"input", "is_query"}, answer [[f32]].
    Seed,
    /// Infinity: POST /embeddings, OpenAI shape.
    Infinity,
    /// Hugging Face TEI: POST /embed {"inputs": [...]}, answer [[f32]].
    Tei,
}

/// What a well-formed answer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Number of vectors.
    pub vectors: usize,
    /// Their common dimension.
    pub dim: usize,
    /// `usage.total_tokens`, when the answer reports it.
    pub usage_tokens: Option<u64>,
}

/// Why an answer was refused: a short error kind (the key errors are counted under) and a
/// detail for the first example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Counting key, e.g. `http_503`, `timeout`, `wrong_count`.
    pub kind: String,
    /// Human detail (an answer snippet or an error message).
    pub detail: String,
}

impl Failure {
    /// A failure of `kind` with `detail`.
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            detail: detail.into(),
        }
    }
}

#[derive(Serialize)]
struct OpenAiRequest<'a> {
    input: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
}

#[derive(Serialize)]
struct SeedRequest<'a> {
    input: &'a [String],
    is_query: bool,
}

#[derive(Serialize)]
struct TeiRequest<'a> {
    inputs: &'a [String],
}

#[derive(Deserialize)]
struct OpenAiResponse {
    data: Vec<OpenAiItem>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct OpenAiItem {
    embedding: VecLen,
}

#[derive(Deserialize)]
struct Usage {
    total_tokens: Option<u64>,
}

/// The length of a JSON number array, counted without parsing the numbers (cheap, so the
/// generator is not the bottleneck).
struct VecLen(usize);

impl<'de> Deserialize<'de> for VecLen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = VecLen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<VecLen, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(VecLen(n))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<VecLen, E> {
                Err(E::custom("base64 embeddings are not requested"))
            }
        }
        deserializer.deserialize_seq(Count)
    }
}

impl Api {
    /// The route on the target, appended to `--url`.
    pub fn default_path(self) -> &'static str {
        match self {
            Api::Openai => "/v1/embeddings",
            Api::Seed => "/api/v1/embedding/api",
            Api::Infinity => "/embeddings",
            Api::Tei => "/embed",
        }
    }

    /// The JSON body asking to embed `texts`.
    pub fn request_body(
        self,
        texts: &[String],
        model: Option<&str>,
        is_query: bool,
    ) -> Result<Bytes> {
        let json = match self {
            Api::Openai | Api::Infinity => serde_json::to_vec(&OpenAiRequest {
                input: texts,
                model,
            })?,
            Api::Seed => serde_json::to_vec(&SeedRequest {
                input: texts,
                is_query,
            })?,
            Api::Tei => serde_json::to_vec(&TeiRequest { inputs: texts })?,
        };
        Ok(Bytes::from(json))
    }

    /// Checks a 200 answer's body for `inputs` vectors of one non-zero dimension.
    pub fn check_answer(self, body: &[u8], inputs: usize) -> Result<Answer, Failure> {
        let bad_json =
            |e: serde_json::Error| Failure::new("bad_json", format!("{e}: {}", snippet(body)));
        let (dims, usage_tokens) = match self {
            Api::Openai | Api::Infinity => {
                let r: OpenAiResponse = serde_json::from_slice(body).map_err(bad_json)?;
                let dims = r.data.into_iter().map(|item| item.embedding.0).collect();
                (dims, r.usage.and_then(|u| u.total_tokens))
            }
            Api::Seed | Api::Tei => {
                let r: Vec<VecLen> = serde_json::from_slice(body).map_err(bad_json)?;
                (r.into_iter().map(|v| v.0).collect::<Vec<_>>(), None)
            }
        };
        if dims.len() != inputs {
            let detail = format!("{} vectors for {inputs} inputs", dims.len());
            return Err(Failure::new("wrong_count", detail));
        }
        let dim = dims.first().copied().unwrap_or(0);
        if dim == 0 || dims.iter().any(|&d| d != dim) {
            return Err(Failure::new(
                "bad_vector",
                format!("vector dimensions {dims:?}"),
            ));
        }
        Ok(Answer {
            vectors: dims.len(),
            dim,
            usage_tokens,
        })
    }
}

/// The start of an answer body, as text, for error details.
pub fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    if body.len() > MAX {
        format!("{text}...")
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> Vec<String> {
        vec!["a b".into(), "c".into()]
    }

    #[test]
    fn request_bodies_have_each_api_shape() {
        let t = texts();
        let body = |api: Api, model| -> serde_json::Value {
            serde_json::from_slice(&api.request_body(&t, model, true).unwrap()).unwrap()
        };
        assert_eq!(
            body(Api::Openai, None),
            serde_json::json!({"input": ["a b", "c"]})
        );
        assert_eq!(
            body(Api::Infinity, Some("m")),
            serde_json::json!({"input": ["a b", "c"], "model": "m"})
        );
        assert_eq!(
            body(Api::Seed, None),
            serde_json::json!({"input": ["a b", "c"], "is_query": true})
        );
        assert_eq!(
            body(Api::Tei, None),
            serde_json::json!({"inputs": ["a b", "c"]})
        );
    }

    #[test]
    fn answers_are_checked_for_count_and_dimension() {
        let openai = br#"{"object":"list","data":[{"index":0,"embedding":[0.1,-2e-3,3]},
            {"index":1,"embedding":[1,2,3]}],"usage":{"prompt_tokens":5,"total_tokens":5}}"#;
        let ok = Api::Openai.check_answer(openai, 2).unwrap();
        assert_eq!((ok.vectors, ok.dim, ok.usage_tokens), (2, 3, Some(5)));
        assert_eq!(
            Api::Openai.check_answer(openai, 3).unwrap_err().kind,
            "wrong_count"
        );

        let arrays = b"[[1.0, 2.0], [3.0, 4.0]]";
        let ok = Api::Tei.check_answer(arrays, 2).unwrap();
        assert_eq!((ok.dim, ok.usage_tokens), (2, None));
        let ragged = b"[[1.0, 2.0], [3.0]]";
        assert_eq!(
            Api::Seed.check_answer(ragged, 2).unwrap_err().kind,
            "bad_vector"
        );
        assert_eq!(
            Api::Seed.check_answer(b"[[], []]", 2).unwrap_err().kind,
            "bad_vector"
        );
        assert_eq!(
            Api::Seed
                .check_answer(b"{\"error\":1}", 2)
                .unwrap_err()
                .kind,
            "bad_json"
        );
    }
}
