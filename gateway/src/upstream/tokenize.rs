//! Tokenize and decode calls: one core NATS request/reply on the tokenize subject of the
//! call's model (`{prefix}.tokenize`, `{prefix}.models.{route}.tokenize`, or
//! `{tokenize}.from.{identity}` for a gateway with an identity), answered by an embedding
//! tokenizer worker of that model. No acknowledgement and no resend: a call is
//! cheap and idempotent, and one that gets no answer by its deadline fails with `Timeout`.

use async_nats::{Request, RequestErrorKind};
use common::wire::{self, tokenize::TokenizerAnswer, tokenize::TokenizerCall};
use tokio::time::Instant;

use super::{Upstream, UpstreamError};

impl Upstream {
    /// Sends `call` to the tokenizer workers of the model on `route` and waits for its
    /// answer until `deadline`; a worker's refusal is [`UpstreamError::Worker`].
    pub async fn tokenizer_call(
        &self,
        call: &TokenizerCall,
        route: Option<&str>,
        deadline: Instant,
    ) -> Result<TokenizerAnswer, UpstreamError> {
        let payload = wire::encode(call).map_err(|e| UpstreamError::Publish(e.to_string()))?;
        let limit = self.client.server_info().max_payload;
        if limit > 0 && payload.len() > limit {
            return Err(UpstreamError::PayloadTooLarge {
                size: payload.len(),
                limit,
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let request = Request::new().payload(payload.into()).timeout(Some(left));
        let message = self
            .client
            .send_request(self.tokenize_subject(route), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => UpstreamError::NoResponders,
                RequestErrorKind::TimedOut => UpstreamError::Timeout,
                _ => UpstreamError::Publish(e.to_string()),
            })?;
        match wire::decode::<TokenizerAnswer>(&message.payload) {
            Ok(TokenizerAnswer::Error(reply)) => Err(UpstreamError::Worker(reply)),
            Ok(answer) => Ok(answer),
            Err(e) => Err(UpstreamError::BadReply(e.to_string())),
        }
    }
}
