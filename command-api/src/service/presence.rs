//! Commands of the presence aggregate: heartbeats and going offline.

use events::Event;
use platform::auth::Claims;

use super::{Caller, CommandContext, CommandError, CommandOutcome, CommandService, Decision, Route, events_of};
use crate::domain::Aggregate;
use crate::domain::presence::{Presence, PresenceCommand};
use crate::locks::LockKey;

impl CommandService {
    /// A heartbeat or going offline: accepted for any active session.
    pub async fn presence(
        &self,
        claims: &Claims,
        command: PresenceCommand,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        let user = claims.sub;
        let locks = vec![LockKey::Presence(user), LockKey::Actor(user)];
        let (outcome, _) = self
            .execute(Caller::Session(claims), Route::Owner(user.to_string()), locks, ctx, |model, _| {
                let id = user.to_string();
                let events = Presence::decide(&(), command, &())?;
                Ok(Decision::new(id.clone(), model.presence_version(&id), events_of(events, Event::Presence)))
            })
            .await?;
        Ok(outcome)
    }
}
