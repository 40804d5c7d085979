//! Tokenize and decode calls on `{prefix}.tokenize` (and `{tokenize}.from.*`), served beside
//! the request loop by embedding tokenizer workers in their queue group: core NATS
//! request/reply, one answer per call, no batching and no GPU work. The reply subject follows
//! the same rule as the request subjects' ([`crate::routing`]); the work runs on the worker's
//! pool of blocking threads; a call is bounded by `max_request_tokens` (tokens of all its
//! texts, or ids to decode) and its answer by the server's `max_payload`.

use std::sync::Arc;
use std::time::Instant;

use async_nats::Client;
use bytes::Bytes;
use common::subjects::{FROM_TOKEN, Subjects, TOKENIZER_QUEUE_GROUP, reply_prefix_of};
use common::wire::tokenize::{
    DecodeReply, DecodeRequest, TokenizeReply, TokenizeRequest, TokenizerAnswer, TokenizerCall,
};
use common::wire::{self, ErrorCode, ErrorReply, InputType};
use futures::StreamExt;
use futures::stream::SelectAll;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use super::intake::{check_lengths, decode, id_of};
use crate::budget::RequestBudget;
use crate::routing::{DroppedRequests, Route, shortened};
use crate::tokenize::TextTokenizer;

/// Characters of a hostile subject or id written to a log line.
const LOGGED_CHARS: usize = 128;

/// What a call may ask for.
#[derive(Debug, Clone, Copy)]
pub(super) struct CallLimits {
    /// Tokens of all texts of a tokenize call, or ids of a decode call.
    pub(super) max_tokens: usize,
    /// The server's `max_payload` (0 while unknown): no answer may be larger.
    pub(super) max_payload: usize,
}

/// The running call service; [`Calls::stop`] drains it.
pub(super) struct Calls {
    /// Asks the loop to drain.
    stop: oneshot::Sender<()>,
    /// The loop.
    task: JoinHandle<()>,
}

impl Calls {
    /// Subscribes (queue group of the embedding tokenizers) to the bare tokenize subject,
    /// when `prefixes` serve it, and to `{tokenize}.from.*`, and serves calls until stopped.
    pub(super) async fn start(
        client: &Client,
        subjects: &Subjects,
        prefixes: &[String],
        tokenizer: Arc<TextTokenizer>,
        pool: Arc<Semaphore>,
        limits: CallLimits,
    ) -> anyhow::Result<Self> {
        let bare = subjects.tokenize();
        let mut names = vec![format!("{bare}.{FROM_TOKEN}.*")];
        if !prefixes.is_empty() {
            names.push(bare.clone());
        }
        let mut calls = SelectAll::new();
        for name in &names {
            calls.push(
                client
                    .queue_subscribe(name.clone(), TOKENIZER_QUEUE_GROUP.into())
                    .await?,
            );
        }
        let server = Server {
            client: client.clone(),
            subjects: subjects.clone(),
            open: Arc::from(prefixes.to_vec()),
            tokenizer,
            pool,
            limits,
            dropped: DroppedRequests::default(),
        };
        let (stop, stopped) = oneshot::channel();
        tracing::info!(calls = %names.join(" "), "serving tokenize calls");
        Ok(Self {
            stop,
            task: tokio::spawn(server.serve(calls, stopped)),
        })
    }

    /// Stops taking calls, answers those already routed here and returns.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the tokenize call loop failed");
        }
    }
}

/// What the loop owns.
struct Server {
    client: Client,
    subjects: Subjects,
    /// Reply prefixes allowed on the bare subject.
    open: Arc<[String]>,
    tokenizer: Arc<TextTokenizer>,
    pool: Arc<Semaphore>,
    limits: CallLimits,
    dropped: DroppedRequests,
}

impl Server {
    /// Takes calls until `stopped`, then drains the subscriptions and waits for the answers.
    async fn serve(
        mut self,
        mut calls: SelectAll<async_nats::Subscriber>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        let mut answering = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                Some(message) = calls.next() => self.take(message, &mut answering),
                Some(_) = answering.join_next(), if !answering.is_empty() => {}
            }
        }
        for subscription in calls.iter_mut() {
            if let Err(e) = subscription.drain().await {
                tracing::warn!(error = %e, "draining a tokenize subscription failed");
            }
        }
        while let Some(message) = calls.next().await {
            self.take(message, &mut answering);
        }
        while answering.join_next().await.is_some() {}
    }

    /// Checks a call's reply subject and hands it to the pool; a call whose reply subject
    /// breaks the reply rule is dropped unanswered (and logged, a few lines at most).
    fn take(&mut self, message: async_nats::Message, answering: &mut JoinSet<()>) {
        let Some(reply_to) = message.reply.as_ref().map(|r| r.to_string()) else {
            tracing::debug!(subject = %message.subject, "tokenize call without a reply subject dropped");
            return;
        };
        let route = self.route_of(message.subject.as_str());
        let verdict = route.as_ref().map_or_else(
            || Err("its subject names no valid requester".to_string()),
            |route| route.check("reply subject", &reply_to),
        );
        if let Err(reason) = verdict {
            if let Some(unlogged) = self.dropped.count(Instant::now()) {
                let id = id_of(&message.payload).unwrap_or_default();
                tracing::warn!(
                    subject = shortened(message.subject.as_str(), LOGGED_CHARS),
                    reply = shortened(&reply_to, LOGGED_CHARS),
                    id = shortened(&id, LOGGED_CHARS),
                    reason = shortened(&reason, 2 * LOGGED_CHARS),
                    dropped = self.dropped.total(),
                    unlogged,
                    "tokenize call dropped unanswered: its reply subject breaks the reply rule"
                );
            }
            return;
        }
        let (client, tokenizer, pool, limits) = (
            self.client.clone(),
            Arc::clone(&self.tokenizer),
            Arc::clone(&self.pool),
            self.limits,
        );
        answering.spawn(async move {
            // The pool is shared with the request loop's tokenization; closed only at exit.
            let Ok(_permit) = pool.acquire_owned().await else {
                return;
            };
            let payload = message.payload;
            let answer =
                tokio::task::spawn_blocking(move || answer(&tokenizer, &payload, limits)).await;
            let bytes = match answer {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(error = %e, "a tokenize call panicked");
                    encoded(&TokenizerAnswer::Error(ErrorReply::new(
                        None,
                        ErrorCode::Internal,
                        "the tokenizer failed on this call",
                    )))
                }
            };
            if let Err(e) = client.publish(reply_to, bytes).await {
                tracing::warn!(error = %e, "cannot answer a tokenize call");
            }
        });
    }

    /// The reply rule of a call that arrived on `subject`, as for requests.
    fn route_of(&self, subject: &str) -> Option<Route> {
        if subject == self.subjects.tokenize() {
            return (!self.open.is_empty()).then(|| Route::Open(Arc::clone(&self.open)));
        }
        let identity = self.subjects.tokenize_requester_of(subject)?;
        Some(Route::Requester {
            identity: identity.to_string(),
            prefix: reply_prefix_of(identity),
        })
    }
}

/// The encoded answer to the call in `payload`: its result, or the error of the first check
/// it fails; an answer over the server's `max_payload` is replaced by an error saying so.
pub(super) fn answer(tokenizer: &TextTokenizer, payload: &Bytes, limits: CallLimits) -> Bytes {
    let answer = match decode::<TokenizerCall>(payload) {
        Ok(TokenizerCall::Tokenize(request)) => tokenize(tokenizer, request, limits.max_tokens),
        Ok(TokenizerCall::Decode(request)) => detokenize(tokenizer, request, limits.max_tokens),
        Err(error) => Err(error),
    };
    let (id, answer) = match answer {
        Ok((id, answer)) => (id, answer),
        Err(error) => return encoded(&TokenizerAnswer::Error(error)),
    };
    let bytes = encoded(&answer);
    if limits.max_payload > 0 && bytes.len() > limits.max_payload {
        return encoded(&TokenizerAnswer::Error(ErrorReply::new(
            Some(id),
            ErrorCode::InvalidRequest,
            format!(
                "the answer takes {} bytes, more than the message bus limit of {} bytes; send \
                 fewer or shorter texts",
                bytes.len(),
                limits.max_payload
            ),
        )));
    }
    bytes
}

/// The ids (and, when asked, tokens) of every text of `request`.
fn tokenize(
    tokenizer: &TextTokenizer,
    request: TokenizeRequest,
    max_tokens: usize,
) -> Result<(String, TokenizerAnswer), ErrorReply> {
    let id = request.id;
    check_lengths(&id, request.instruction.as_deref())?;
    let refuse = |code, message: String| ErrorReply::new(Some(id.clone()), code, message);
    if request.inputs.is_empty() {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "`inputs` must hold at least one text".into(),
        ));
    }
    let instruction = match request.input_type {
        InputType::Query => request.instruction.as_deref(),
        InputType::Document => None,
    };
    let mut budget = RequestBudget::new(max_tokens, "input");
    let mut sequences = Vec::with_capacity(request.inputs.len());
    for (index, text) in request.inputs.iter().enumerate() {
        let sequence = tokenizer
            .tokens(
                text,
                request.input_type,
                instruction,
                request.add_special_tokens,
                request.return_tokens,
            )
            .map_err(|e| refuse(ErrorCode::InvalidRequest, format!("input {index}: {e}")))?;
        budget.take(&id, index, sequence.ids.len())?;
        sequences.push(sequence);
    }
    let reply = TokenizeReply {
        id: id.clone(),
        max_length: u32::try_from(tokenizer.max_length()).unwrap_or(u32::MAX),
        sequences,
    };
    Ok((id, TokenizerAnswer::Tokens(reply)))
}

/// The text of every id sequence of `request`.
fn detokenize(
    tokenizer: &TextTokenizer,
    request: DecodeRequest,
    max_tokens: usize,
) -> Result<(String, TokenizerAnswer), ErrorReply> {
    let id = request.id;
    check_lengths(&id, None)?;
    let refuse =
        |message: String| ErrorReply::new(Some(id.clone()), ErrorCode::InvalidRequest, message);
    if request.sequences.is_empty() {
        return Err(refuse("`sequences` must hold at least one id list".into()));
    }
    let mut budget = RequestBudget::new(max_tokens, "sequence");
    let mut texts = Vec::with_capacity(request.sequences.len());
    for (index, ids) in request.sequences.iter().enumerate() {
        budget.take(&id, index, ids.len())?;
        let text = tokenizer
            .decode(ids, request.skip_special_tokens)
            .map_err(|e| refuse(format!("sequence {index}: {e}")))?;
        texts.push(text);
    }
    let reply = DecodeReply {
        id: id.clone(),
        texts,
    };
    Ok((id, TokenizerAnswer::Texts(reply)))
}

/// `answer` encoded; answers are plain maps of strings and numbers, which always encode.
fn encoded(answer: &TokenizerAnswer) -> Bytes {
    match wire::encode(answer) {
        Ok(bytes) => bytes.into(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a tokenize answer; this is a bug");
            Bytes::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use common::wire::tokenize::TokenizedText;

    use super::*;
    use crate::tokenize::TokenizerOptions;

    fn fixture_tokenizer() -> TextTokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/qwen3-tiny/tokenizer.json");
        TextTokenizer::from_file(&path, TokenizerOptions::default()).expect("fixture tokenizer")
    }

    fn call(
        tokenizer: &TextTokenizer,
        call: &TokenizerCall,
        limits: CallLimits,
    ) -> TokenizerAnswer {
        let payload = Bytes::from(wire::encode(call).unwrap());
        wire::decode(&answer(tokenizer, &payload, limits)).expect("answer decodes")
    }

    const ROOMY: CallLimits = CallLimits {
        max_tokens: 1 << 16,
        max_payload: 1 << 20,
    };

    fn request(inputs: &[&str]) -> TokenizeRequest {
        TokenizeRequest {
            id: "t".into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            input_type: InputType::Document,
            instruction: None,
            add_special_tokens: true,
            return_tokens: false,
        }
    }

    #[test]
    fn calls_are_answered_with_the_ids_and_texts_back() {
        let tokenizer = fixture_tokenizer();
        let text = "The quick brown fox";
        let expected = tokenizer
            .encode(text, InputType::Document, None, None)
            .unwrap();
        let sequences = match call(
            &tokenizer,
            &TokenizerCall::Tokenize(request(&[text])),
            ROOMY,
        ) {
            TokenizerAnswer::Tokens(reply) => reply.sequences,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            sequences,
            [TokenizedText {
                ids: expected.clone(),
                tokens: Vec::new()
            }]
        );
        let decode = TokenizerCall::Decode(DecodeRequest {
            id: "d".into(),
            sequences: vec![expected],
            skip_special_tokens: true,
        });
        match call(&tokenizer, &decode, ROOMY) {
            TokenizerAnswer::Texts(reply) => assert_eq!(reply.texts, [text]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_calls_are_refused_with_the_reason() {
        let tokenizer = fixture_tokenizer();
        let refusal = |answer: TokenizerAnswer| match answer {
            TokenizerAnswer::Error(error) => error,
            other => panic!("expected an error, got {other:?}"),
        };
        let error = refusal(call(
            &tokenizer,
            &TokenizerCall::Tokenize(request(&[])),
            ROOMY,
        ));
        assert!(
            error.error.message.contains("at least one text"),
            "{error:?}"
        );

        let tight = CallLimits {
            max_tokens: 3,
            ..ROOMY
        };
        let error = refusal(call(
            &tokenizer,
            &TokenizerCall::Tokenize(request(&["one two three four"])),
            tight,
        ));
        assert_eq!(error.error.code, ErrorCode::TooManyTokens);

        let unknown = TokenizerCall::Decode(DecodeRequest {
            id: "d".into(),
            sequences: vec![vec![1, u32::MAX]],
            skip_special_tokens: true,
        });
        let error = refusal(call(&tokenizer, &unknown, ROOMY));
        assert!(
            error
                .error
                .message
                .contains("sequence 0: token id 4294967295 is not in the vocabulary"),
            "{error:?}"
        );

        let small = CallLimits {
            max_payload: 64,
            ..ROOMY
        };
        let mut long = request(&["many words make a long answer with token details"]);
        long.return_tokens = true;
        let error = refusal(call(&tokenizer, &TokenizerCall::Tokenize(long), small));
        assert!(
            error
                .error
                .message
                .contains("more than the message bus limit of 64 bytes"),
            "{error:?}"
        );

        let malformed =
            Bytes::from(wire::encode(&serde_json::json!({"op": "x", "id": "m"})).unwrap());
        match wire::decode::<TokenizerAnswer>(&answer(&tokenizer, &malformed, ROOMY)).unwrap() {
            TokenizerAnswer::Error(error) => assert_eq!(error.id.as_deref(), Some("m")),
            other => panic!("{other:?}"),
        }
    }
}
