//! Commands of the connection aggregate: sending and reviewing requests.

use events::Event;
use events::connection::{RequestStatus, pair_key};
use platform::auth::Claims;
use platform::error_code::ErrorCode;
use uuid::Uuid;

use super::{
    Caller, CommandContext, CommandError, CommandOutcome, CommandService, Decision, Route, SlotRequest, events_of,
};
use crate::domain::connection::{Connection, ConnectionCommand, ConnectionFacts};
use crate::domain::user::{User, UserCommand, UserFacts};
use crate::domain::{Aggregate, Rejection};
use crate::locks::LockKey;

impl CommandService {
    /// Sends a connection request. Locks the pair (one request per pair,
    /// either direction) and the sender; once the pair allows it, reserves
    /// a slot of the sender's daily limit at the sender's owner, then
    /// appends (docs/scale-out.md §3).
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
                model.user(from).ok_or(CommandError::Unauthenticated)?;
                let facts = ConnectionFacts { recipient_exists: model.user(to).is_some(), now };
                let existing = model.connection(&pair).cloned();
                let base = existing.as_ref().map_or(0, |c| c.version);
                let request_id = Uuid::now_v7();
                let command = ConnectionCommand::Send { request_id, from, to, status };
                let events = Connection::decide(&existing, command, &facts)?;
                let decision = Decision::new(pair.clone(), base, events_of(events, Event::Connection));
                let slot = SlotRequest { sender_id: from, request_id, to_user_id: to };
                Ok(Decision { reserve: Some(slot), ..decision })
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

    /// Reserves a slot of the sender's daily limit: here when this instance
    /// serves the sender's partition, otherwise at its owner. Refused with
    /// 429 `daily_limit_reached` at the limit.
    pub(super) async fn reserve_slot(&self, slot: SlotRequest) -> Result<(), CommandError> {
        match self.owned_partition(&Route::Owner(slot.sender_id.to_string())) {
            // Boxed: it runs `execute`, which called this (a reservation
            // itself reserves nothing, so this recurses once at most).
            Ok(_) => Box::pin(self.reserve_slot_here(slot)).await,
            Err(CommandError::NotOwner { partition }) => {
                let owner = self.routes.owner_of(partition).await.ok_or_else(|| CommandError::Unavailable {
                    dependency: "command-api",
                    detail: format!("no live owner of partition {partition} for the sender's request slot"),
                })?;
                self.routes.reserve_slot(&owner, &slot).await
            }
            Err(other) => Err(other),
        }
    }

    /// Reserves a request slot on the sender's aggregate, which this
    /// instance serves: the daily limit's one point of decision. Called for
    /// its own pair commands and by other instances (`http::internal`).
    pub async fn reserve_slot_here(&self, slot: SlotRequest) -> Result<(), CommandError> {
        let sender = slot.sender_id;
        let ctx =
            CommandContext { correlation_id: slot.request_id.to_string(), idempotency_key: None, fingerprint: None };
        let route = Route::Owner(sender.to_string());
        self.execute(Caller::User(sender), route, vec![LockKey::Quota(sender)], &ctx, |model, now| {
            let state = model.user(sender).cloned();
            let version = state.as_ref().map_or(0, |s| s.version);
            let command = UserCommand::ReserveRequestSlot {
                request_id: slot.request_id,
                to: slot.to_user_id,
                unreserved_today: model.sent_on(sender, now.date_naive()),
            };
            let events = User::decide(&state, command, &UserFacts { email_owner: None, now })?;
            Ok(Decision::new(sender.to_string(), version, events_of(events, Event::User)))
        })
        .await?;
        Ok(())
    }
}
