//! Tokenize and decode calls on the tokenize subject (`{prefix}.tokenize`), answered over
//! core NATS request/reply by the embedding tokenizer workers: the ids the model reads for a
//! text (template and `<|endoftext|>` included), and text back from ids. No GPU work, no
//! work queue: one request, one answer ([`TokenizerAnswer`]) on its reply subject.

use serde::{Deserialize, Serialize};

use super::{ErrorReply, InputType};

/// A call on the tokenize subject; `op` (`tokenize` or `decode`) says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum TokenizerCall {
    /// Texts to ids.
    Tokenize(TokenizeRequest),
    /// Ids to texts.
    Decode(DecodeRequest),
}

/// Texts to tokenize exactly as an `EmbedRequest` with the same fields would be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeRequest {
    /// Caller's id, echoed in the answer.
    #[serde(default)]
    pub id: String,
    /// The texts; one sequence per text in the answer, in order.
    pub inputs: Vec<String>,
    /// Query (the instruction template is applied) or document; documents by default.
    #[serde(default)]
    pub input_type: InputType,
    /// Task description for queries; the worker's default when absent.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Keep the final `<|endoftext|>` the model reads (`true` when absent); `false` leaves
    /// it out.
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    /// Also answer each token's text, whether it is special and where it lies in the
    /// formatted text (`false` when absent: ids only).
    #[serde(default)]
    pub return_tokens: bool,
}

/// The answer to a [`TokenizeRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeReply {
    /// The request's id.
    pub id: String,
    /// The worker's token limit per input (`<|endoftext|>` included): sequences longer than
    /// this are cut or refused when embedded. Tokenize answers are never cut.
    pub max_length: u32,
    /// One per input, in input order.
    pub sequences: Vec<TokenizedText>,
}

/// The tokens of one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizedText {
    /// The ids the model reads.
    pub ids: Vec<u32>,
    /// One per id (when `return_tokens` was set; empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenSpan>,
}

/// One token's text and place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenSpan {
    /// The part of the formatted text the token covers; for a special token the model adds
    /// (the final `<|endoftext|>`), the token itself.
    pub text: String,
    /// Whether it is a special token (`<|endoftext|>` and the other added control tokens).
    pub special: bool,
    /// UTF-8 byte offset of its start in the formatted text (the query template included);
    /// absent for the added final `<|endoftext|>`.
    #[serde(default)]
    pub start: Option<u32>,
    /// UTF-8 byte offset just past its end in the formatted text; absent as `start` is.
    #[serde(default)]
    pub stop: Option<u32>,
}

/// Ids to turn back into text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeRequest {
    /// Caller's id, echoed in the answer.
    #[serde(default)]
    pub id: String,
    /// The id sequences; one text per sequence in the answer, in order.
    pub sequences: Vec<Vec<u32>>,
    /// Leave special tokens (`<|endoftext|>`, ...) out of the text (`true` when absent).
    #[serde(default = "yes")]
    pub skip_special_tokens: bool,
}

/// The answer to a [`DecodeRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeReply {
    /// The request's id.
    pub id: String,
    /// One text per sequence, in order.
    pub texts: Vec<String>,
}

/// Any answer on a tokenize call's reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenizerAnswer {
    /// The call failed.
    Error(ErrorReply),
    /// The answer to a tokenize call.
    Tokens(TokenizeReply),
    /// The answer to a decode call.
    Texts(DecodeReply),
}

/// `true`, the default of the flags that are on unless turned off.
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::super::{ErrorCode, decode, encode};
    use super::*;

    #[test]
    fn calls_carry_their_op_and_defaults() {
        let call = TokenizerCall::Tokenize(TokenizeRequest {
            id: "t".into(),
            inputs: vec!["a".into()],
            input_type: InputType::Query,
            instruction: None,
            add_special_tokens: false,
            return_tokens: true,
        });
        let bytes = encode(&call).unwrap();
        let as_json: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(as_json["op"], "tokenize");
        assert_eq!(decode::<TokenizerCall>(&bytes).unwrap(), call);

        // A minimal call from another language: the flags take their defaults.
        let minimal = encode(&serde_json::json!({"op": "decode", "sequences": [[1, 2]]})).unwrap();
        match decode::<TokenizerCall>(&minimal).unwrap() {
            TokenizerCall::Decode(request) => {
                assert!(request.skip_special_tokens);
                assert_eq!(request.sequences, [[1, 2]]);
            }
            other => panic!("{other:?}"),
        }
        let minimal = encode(&serde_json::json!({"op": "tokenize", "inputs": ["x"]})).unwrap();
        match decode::<TokenizerCall>(&minimal).unwrap() {
            TokenizerCall::Tokenize(request) => {
                assert!(request.add_special_tokens && !request.return_tokens);
                assert_eq!(request.input_type, InputType::Document);
            }
            other => panic!("{other:?}"),
        }
        let unknown = encode(&serde_json::json!({"op": "embed", "inputs": ["x"]})).unwrap();
        assert!(decode::<TokenizerCall>(&unknown).is_err());
    }

    #[test]
    fn answers_decode_to_their_kind() {
        let tokens = TokenizerAnswer::Tokens(TokenizeReply {
            id: "t".into(),
            max_length: 8,
            sequences: vec![TokenizedText {
                ids: vec![1, 2],
                tokens: Vec::new(),
            }],
        });
        let texts = TokenizerAnswer::Texts(DecodeReply {
            id: "d".into(),
            texts: vec!["ab".into()],
        });
        let error = TokenizerAnswer::Error(ErrorReply::new(
            Some("e".into()),
            ErrorCode::InvalidRequest,
            "bad",
        ));
        for answer in [tokens, texts, error] {
            assert_eq!(
                decode::<TokenizerAnswer>(&encode(&answer).unwrap()).unwrap(),
                answer
            );
        }
    }
}
