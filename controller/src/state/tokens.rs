//! Client tokens: issue and revoke. Only ids and hashes are replicated.

use super::{Ctx, Event, State};
use crate::auth::TokenRecord;
use crate::error::{Error, Result};
use crate::types::Outcome;

/// Most tokens the state keeps, so a careless script cannot grow it without bound.
pub const MAX_TOKENS: usize = 10_000;

impl State {
    pub(super) fn issue_token(&mut self, cx: &mut Ctx<'_>, record: TokenRecord) -> Result<Outcome> {
        if self.tokens.contains_key(&record.id) {
            return Err(Error::AlreadyExists(format!(
                "token id `{}` is taken; create the token again",
                record.id
            )));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(Error::FailedPrecondition(format!(
                "{MAX_TOKENS} tokens exist; revoke unused or expired ones first"
            )));
        }
        self.tokens.insert(record.id.clone(), record.clone());
        cx.events.push(Event::TokenIssued(record));
        Ok(Outcome::Done)
    }

    pub(super) fn revoke_token(&mut self, cx: &mut Ctx<'_>, id: &str) -> Result<Outcome> {
        if self.tokens.remove(id).is_none() {
            return Err(Error::NotFound(format!(
                "no token has id `{id}`; `rebeam token list` shows the ids"
            )));
        }
        cx.events.push(Event::TokenRevoked(id.to_string()));
        Ok(Outcome::Done)
    }
}
