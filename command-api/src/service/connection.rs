//! Commands of the connection aggregate: sending and reviewing requests.

use events::Event;
use events::connection::{RequestStatus, pair_key};
use platform::auth::Claims;
use platform::error_code::ErrorCode;
use uuid::Uuid;

use super::{Caller, CommandContext, CommandError, CommandOutcome, CommandService, Decision, Route, events_of};
use crate::domain::connection::{Connection, ConnectionCommand, ConnectionFacts};
use crate::domain::{Aggregate, Rejection};
use crate::locks::LockKey;

impl CommandService {
    /// Sends a connection request. Locks the pair (one request per pair,
    /// either direction) and the sender (the daily count).
    pub async fn send_request(
        &self,
        claims: &Claims,
        to: Uuid,
        status: RequestStatus,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        let from = claims.sub;
        let pair = pair_key(from, to);
        let locks = vec![LockKey::Pair(pair.clone()), LockKey::Actor(from)];
        let (outcome, _) = self
            .execute(Caller::Session(claims), Route::OwnerReadingUsers(pair.clone()), locks, ctx, |model, now| {
                let sender = model.user(from).ok_or(CommandError::Unauthenticated)?;
                let facts = ConnectionFacts {
                    recipient_exists: model.user(to).is_some(),
                    sender_tier: sender.tier,
                    sent_today: model.sent_on(from, now.date_naive()),
                    now,
                };
                let existing = model.connection(&pair).cloned();
                let base = existing.as_ref().map_or(0, |c| c.version);
                let command = ConnectionCommand::Send { request_id: Uuid::now_v7(), from, to, status };
                let events = Connection::decide(&existing, command, &facts)?;
                Ok(Decision::new(pair.clone(), base, events_of(events, Event::Connection)))
            })
            .await?;
        Ok(outcome)
    }

    /// Reviews a request sent to the caller. Locks the reviewer and, when
    /// the request is known, its pair.
    pub async fn review_request(
        &self,
        claims: &Claims,
        request_id: Uuid,
        status: RequestStatus,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        let reviewer = claims.sub;
        let mut pair = self.read().pair_of_request(request_id).map(str::to_owned);
        if pair.is_none() {
            // Sent a moment ago through another owner, perhaps.
            self.sync_unserved(events::Topic::ConnectionEvents).await?;
            pair = self.read().pair_of_request(request_id).map(str::to_owned);
        }
        let route = pair.clone().map_or(Route::Here, Route::OwnerReadingUsers);
        let mut locks = vec![LockKey::Actor(reviewer)];
        locks.extend(pair.clone().map(LockKey::Pair));
        let (outcome, _) = self
            .execute(Caller::Session(claims), route, locks, ctx, |model, now| {
                let existing = pair.as_deref().and_then(|p| model.connection(p).cloned());
                let events = Connection::decide(
                    &existing,
                    ConnectionCommand::Review { reviewer, status },
                    &ConnectionFacts::at(now),
                )?;
                let (Some(pair), Some(existing)) = (pair, existing) else {
                    return Err(Rejection::NotFound {
                        code: ErrorCode::RequestNotFound,
                        message: "no such request".into(),
                    }
                    .into());
                };
                Ok(Decision::new(pair, existing.version, events_of(events, Event::Connection)))
            })
            .await?;
        Ok(outcome)
    }
}
