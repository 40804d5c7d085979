//! The limit on the tokens of one request (`max_request_tokens`): every input's tokens are
//! counted as it is tokenized, and the first input that takes the total past the limit fails
//! the request (the rest are not tokenized).

use common::wire::{ErrorCode, ErrorReply};

/// Tokens taken so far by one request, against its limit.
#[derive(Debug)]
pub struct RequestBudget {
    /// Most tokens the request's inputs may hold together.
    limit: usize,
    /// Tokens of the inputs counted so far.
    used: usize,
    /// What the inputs are called in messages (`input`, `document`).
    noun: &'static str,
}

impl RequestBudget {
    /// A budget of `limit` tokens for inputs called `noun` in error messages.
    pub fn new(limit: usize, noun: &'static str) -> Self {
        Self {
            limit,
            used: 0,
            noun,
        }
    }

    /// Counts input `index` of `tokens` tokens; past the limit, the `too_many_tokens` reply
    /// for request `id`, naming the limit and the running total.
    pub fn take(&mut self, id: &str, index: usize, tokens: usize) -> Result<(), ErrorReply> {
        self.used += tokens;
        if self.used <= self.limit {
            return Ok(());
        }
        let noun = self.noun;
        let span = if index == 0 {
            format!("{noun} 0 holds")
        } else {
            format!("{noun}s 0 to {index} hold")
        };
        Err(ErrorReply::new(
            Some(id.to_string()),
            ErrorCode::TooManyTokens,
            format!(
                "request has more than the limit of {} tokens per request ({span} {}); send \
                 fewer or shorter {noun}s",
                self.limit, self.used
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_limit_passes_and_one_more_fails() {
        let mut budget = RequestBudget::new(10, "input");
        budget.take("r", 0, 4).unwrap();
        budget.take("r", 1, 6).unwrap();
        let error = budget.take("r", 2, 1).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::TooManyTokens);
        assert_eq!(error.id.as_deref(), Some("r"));
        assert!(
            error.error.message.contains("limit of 10 tokens")
                && error.error.message.contains("inputs 0 to 2 hold 11"),
            "{}",
            error.error.message
        );
    }

    #[test]
    fn the_first_input_alone_is_named() {
        let error = RequestBudget::new(3, "document")
            .take("r", 0, 5)
            .unwrap_err();
        assert!(error.error.message.contains("document 0 holds 5"));
    }
}
