//! Tokenize and decode: TEI's `POST /tokenize` and `POST /decode` (errors in TEI's shape),
//! vLLM's `POST /v1/tokenize` and `POST /v1/detokenize`. The ids are those the model reads:
//! a query's include its instruction template, and (unless `add_special_tokens` is false)
//! the final `<|endoftext|>`. Served by the embedding tokenizer workers of the model over its
//! tokenize subject (`docs/protocol.md`): vLLM's `model` picks it ([`crate::models`]), TEI's
//! routes (no `model`) and an absent one use the configured default. Nothing is truncated
//! here.

use axum::extract::State;
use axum::{Extension, Json};
use common::subjects::Task;
use common::trace::RequestTrace;
use common::wire::InputType;
use common::wire::tokenize::{
    DecodeRequest, TokenizeReply, TokenizeRequest, TokenizerAnswer, TokenizerCall,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::extract::JsonBody;
use super::tei_error::{TeiError, TeiJson};
use super::types::Limits;
use super::types::tokenize::{
    TeiDecodeRequest, TeiTokenizeRequest, VllmDetokenizeRequest, VllmTokenizeRequest,
};
use crate::models::ServedModel;
use crate::service::Arrival;

/// One token in TEI's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct SimpleToken {
    /// The token id.
    id: u32,
    /// The part of the text the token covers (the query template included); the token
    /// itself for the final `<|endoftext|>`.
    text: String,
    /// Whether it is a special token.
    special: bool,
    /// UTF-8 byte offset of its start in the text the model reads (template included);
    /// `null` for the final `<|endoftext|>`.
    start: Option<u32>,
    /// UTF-8 byte offset just past its end; `null` as `start` is.
    stop: Option<u32>,
}

/// The answer of vLLM's `POST /v1/tokenize`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VllmTokenizeResponse {
    /// How many ids.
    count: usize,
    /// The token limit per input (`[tokenizer] max_length`).
    max_model_len: u32,
    /// The ids the model reads.
    tokens: Vec<u32>,
    /// Each token's text, with `return_token_strs`; `null` otherwise.
    token_strs: Option<Vec<String>>,
}

/// The answer of vLLM's `POST /v1/detokenize`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VllmDetokenizeResponse {
    /// The text of the ids.
    prompt: String,
}

/// `POST /tokenize` (TEI).
#[utoipa::path(
    post,
    path = "/tokenize",
    tag = "TEI",
    summary = "The token ids the model reads for each text, with their offsets (TEI shape)",
    request_body = TeiTokenizeRequest,
    responses((status = 200, description = "One list of tokens per input, in input order", body = Vec<Vec<SimpleToken>>))
)]
pub async fn tei_tokenize(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    TeiJson(request): TeiJson<TeiTokenizeRequest>,
) -> Result<Json<Vec<Vec<SimpleToken>>>, TeiError> {
    let limits = Limits::from_config(&state.config);
    for (index, text) in request.inputs.iter().enumerate() {
        limits.check_text(|| format!("inputs[{index}]"), text)?;
    }
    if request.inputs.is_empty() {
        return Err(ApiError::field("inputs", "inputs must not be empty").into());
    }
    let call = TokenizeRequest {
        id: trace.request_id().to_string(),
        inputs: request.inputs,
        input_type: request.prompt_name.unwrap_or_default(),
        instruction: request.instruction,
        add_special_tokens: request.add_special_tokens.unwrap_or(true),
        return_tokens: true,
    };
    let model = state.models.resolve(Task::Embed, None).await?;
    let reply = tokenize(&state, call, &model, arrival).await?;
    let mut answer = Vec::with_capacity(reply.sequences.len());
    for sequence in reply.sequences {
        if sequence.tokens.len() != sequence.ids.len() {
            return Err(ApiError::BadReply("a token list does not match its ids".into()).into());
        }
        answer.push(
            sequence
                .ids
                .into_iter()
                .zip(sequence.tokens)
                .map(|(id, token)| SimpleToken {
                    id,
                    text: token.text,
                    special: token.special,
                    start: token.start,
                    stop: token.stop,
                })
                .collect(),
        );
    }
    Ok(Json(answer))
}

/// `POST /decode` (TEI).
#[utoipa::path(
    post,
    path = "/decode",
    tag = "TEI",
    summary = "Text back from token ids (TEI shape)",
    request_body = TeiDecodeRequest,
    responses((status = 200, description = "One text per id list, in order", body = Vec<String>))
)]
pub async fn tei_decode(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    TeiJson(request): TeiJson<TeiDecodeRequest>,
) -> Result<Json<Vec<String>>, TeiError> {
    let call = DecodeRequest {
        id: trace.request_id().to_string(),
        sequences: request.ids,
        skip_special_tokens: request.skip_special_tokens.unwrap_or(true),
    };
    let model = state.models.resolve(Task::Embed, None).await?;
    Ok(Json(decode(&state, call, &model, arrival).await?))
}

/// `POST /v1/tokenize` (vLLM).
#[utoipa::path(
    post,
    path = "/v1/tokenize",
    tag = "vLLM",
    summary = "The token ids the model reads for a text (vLLM shape)",
    request_body = VllmTokenizeRequest,
    responses((status = 200, description = "The ids and the token limit", body = VllmTokenizeResponse))
)]
pub async fn vllm_tokenize(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    JsonBody(request): JsonBody<VllmTokenizeRequest>,
) -> Result<Json<VllmTokenizeResponse>, ApiError> {
    let model = state
        .models
        .resolve(Task::Embed, request.model.as_deref())
        .await?;
    Limits::from_config(&state.config).check_text(|| "prompt".into(), &request.prompt)?;
    let with_strs = request.return_token_strs.unwrap_or(false);
    let call = TokenizeRequest {
        id: trace.request_id().to_string(),
        inputs: vec![request.prompt],
        input_type: request.input_type.unwrap_or(InputType::Document),
        instruction: request.instruction,
        add_special_tokens: request.add_special_tokens.unwrap_or(true),
        return_tokens: with_strs,
    };
    let reply = tokenize(&state, call, &model, arrival).await?;
    let max_model_len = reply.max_length;
    let Some(sequence) = reply.sequences.into_iter().next() else {
        return Err(ApiError::BadReply("no sequence for the prompt".into()));
    };
    Ok(Json(VllmTokenizeResponse {
        count: sequence.ids.len(),
        max_model_len,
        token_strs: with_strs.then(|| sequence.tokens.into_iter().map(|t| t.text).collect()),
        tokens: sequence.ids,
    }))
}

/// `POST /v1/detokenize` (vLLM).
#[utoipa::path(
    post,
    path = "/v1/detokenize",
    tag = "vLLM",
    summary = "Text back from token ids (vLLM shape)",
    request_body = VllmDetokenizeRequest,
    responses((status = 200, description = "The text", body = VllmDetokenizeResponse))
)]
pub async fn vllm_detokenize(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    Extension(arrival): Extension<Arrival>,
    JsonBody(request): JsonBody<VllmDetokenizeRequest>,
) -> Result<Json<VllmDetokenizeResponse>, ApiError> {
    let model = state
        .models
        .resolve(Task::Embed, request.model.as_deref())
        .await?;
    let call = DecodeRequest {
        id: trace.request_id().to_string(),
        sequences: vec![request.tokens],
        skip_special_tokens: true,
    };
    let prompt = decode(&state, call, &model, arrival)
        .await?
        .pop()
        .unwrap_or_default();
    Ok(Json(VllmDetokenizeResponse { prompt }))
}

/// Asks a tokenizer worker of `model` for the ids of `request`'s texts, one sequence per
/// text.
async fn tokenize(
    state: &AppState,
    request: TokenizeRequest,
    model: &ServedModel,
    arrival: Arrival,
) -> Result<TokenizeReply, ApiError> {
    let inputs = request.inputs.len();
    let call = TokenizerCall::Tokenize(request);
    match state.service.tokenizer_call(&call, model, arrival).await? {
        TokenizerAnswer::Tokens(reply) if reply.sequences.len() == inputs => Ok(reply),
        _ => Err(ApiError::BadReply(format!(
            "the answer to a tokenize call is not {inputs} token sequences"
        ))),
    }
}

/// Asks a tokenizer worker of `model` for the text of each of `request`'s id sequences.
async fn decode(
    state: &AppState,
    request: DecodeRequest,
    model: &ServedModel,
    arrival: Arrival,
) -> Result<Vec<String>, ApiError> {
    let sequences = request.sequences.len();
    let call = TokenizerCall::Decode(request);
    match state.service.tokenizer_call(&call, model, arrival).await? {
        TokenizerAnswer::Texts(reply) if reply.texts.len() == sequences => Ok(reply.texts),
        _ => Err(ApiError::BadReply(format!(
            "the answer to a decode call is not {sequences} texts"
        ))),
    }
}
