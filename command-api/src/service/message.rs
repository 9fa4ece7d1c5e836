//! Commands of the message aggregate: sending, and marking delivered or read.

use events::Event;
use events::connection::pair_key;
use platform::auth::Claims;
use uuid::Uuid;

use super::{Caller, CommandContext, CommandError, CommandOutcome, CommandService, Decision, Route, events_of};
use crate::domain::Aggregate;
use crate::domain::message::{Message, MessageCommand, MessageFacts};
use crate::locks::LockKey;

impl CommandService {
    /// Sends a message. Locks the conversation; reads the connection.
    pub async fn send_message(
        &self,
        claims: &Claims,
        to: Uuid,
        text: String,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        let from = claims.sub;
        let pair = pair_key(from, to);
        let locks = vec![LockKey::Conversation(pair.clone()), LockKey::Actor(from)];
        let (outcome, _) = self
            .execute(Caller::Session(claims), Route::OwnerReadingUsers(pair.clone()), locks, ctx, |model, now| {
                let facts =
                    MessageFacts { recipient_exists: model.user(to).is_some(), connected: model.connected(&pair), now };
                let command = MessageCommand::Send { message_id: Uuid::now_v7(), from, to, text };
                let events = Message::decide(&None, command, &facts)?;
                Ok(Decision::new(pair.clone(), model.conversation_version(&pair), events_of(events, Event::Message)))
            })
            .await?;
        Ok(outcome)
    }

    pub async fn read_message(
        &self,
        claims: &Claims,
        message_id: Uuid,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        self.mark_message(claims, MessageCommand::MarkRead { message_id, by: claims.sub }, message_id, ctx).await
    }

    pub async fn deliver_message(
        &self,
        claims: &Claims,
        message_id: Uuid,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        self.mark_message(claims, MessageCommand::MarkDelivered { message_id, by: claims.sub }, message_id, ctx).await
    }

    /// Marks a message delivered or read, as `command` says. Locks the
    /// caller and, when the message is known, its conversation.
    async fn mark_message(
        &self,
        claims: &Claims,
        command: MessageCommand,
        message_id: Uuid,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        let mut pair = self.read().message(message_id).map(|m| m.pair.clone());
        if pair.is_none() {
            // Sent a moment ago through another owner, perhaps.
            self.sync_unserved(events::Topic::MessageEvents).await?;
            pair = self.read().message(message_id).map(|m| m.pair.clone());
        }
        let route = pair.clone().map_or(Route::Here, Route::OwnerReadingUsers);
        let mut locks = vec![LockKey::Actor(claims.sub)];
        locks.extend(pair.map(LockKey::Conversation));
        let (outcome, _) = self
            .execute(Caller::Session(claims), route, locks, ctx, |model, now| {
                let state = model.message(message_id).cloned();
                let events = Message::decide(&state, command, &MessageFacts::at(now))?;
                let pair = state.map(|m| m.pair).unwrap_or_default();
                let base = model.conversation_version(&pair);
                Ok(Decision::new(pair, base, events_of(events, Event::Message)))
            })
            .await?;
        Ok(outcome)
    }
}
