//! Commands of the notification aggregate: marking one read.

use events::Event;
use platform::auth::Claims;
use uuid::Uuid;

use super::{Caller, CommandContext, CommandError, CommandOutcome, CommandService, Decision, Route, events_of};
use crate::domain::Aggregate;
use crate::domain::notification::{Notification, NotificationCommand};
use crate::locks::LockKey;

impl CommandService {
    pub async fn read_notification(
        &self,
        claims: &Claims,
        notification_id: Uuid,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        let reader = claims.sub;
        let locks = vec![LockKey::Notifications(reader), LockKey::Actor(reader)];
        let (outcome, _) = self
            .execute(Caller::Session(claims), Route::Owner(reader.to_string()), locks, ctx, |model, _| {
                let user = reader.to_string();
                let command = NotificationCommand::MarkRead { notification_id, by: reader };
                let events = Notification::decide(&model.notification(notification_id), command, &())?;
                Ok(Decision::new(
                    user.clone(),
                    model.notification_version(&user),
                    events_of(events, Event::Notification),
                ))
            })
            .await?;
        Ok(outcome)
    }
}
