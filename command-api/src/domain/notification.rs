//! A user's notifications (docs/domain.md "Presence and notifications").
//! A notification is born from another aggregate's event (a request, an
//! acceptance: `events::notification::notified_by`); this aggregate only
//! marks it read.

use events::notification::{NotificationEvent, NotificationRead};
use platform::error_code::ErrorCode;
use uuid::Uuid;

use super::{Aggregate, Recorded, Rejection};

/// The notification aggregate (keyed by the notified user on
/// `notification-events`); the state is per notification.
#[derive(Debug)]
pub struct Notification;

#[derive(Debug, Clone)]
pub enum NotificationCommand {
    MarkRead { notification_id: Uuid, by: Uuid },
}

impl Aggregate for Notification {
    /// `None` for an id that notified no one.
    type State = Option<NotificationState>;
    type Command = NotificationCommand;
    type Facts = ();
    type Event = NotificationEvent;

    fn decide(state: &Self::State, command: NotificationCommand, _: &()) -> Result<Vec<NotificationEvent>, Rejection> {
        match command {
            NotificationCommand::MarkRead { notification_id, by } => decide_read(*state, notification_id, by),
        }
    }

    fn apply(state: &mut Self::State, recorded: Recorded<'_, NotificationEvent>) {
        match recorded.event {
            NotificationEvent::Read(_) => {
                if let Some(n) = state {
                    n.read = true;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NotificationState {
    pub owner: Uuid,
    pub read: bool,
}

/// Only the notified user marks it read; marking it again changes nothing.
fn decide_read(
    state: Option<NotificationState>,
    notification_id: Uuid,
    reader: Uuid,
) -> Result<Vec<NotificationEvent>, Rejection> {
    let state = state.ok_or_else(|| Rejection::NotFound {
        code: ErrorCode::NotificationNotFound,
        message: "no such notification".into(),
    })?;
    if state.owner != reader {
        return Err(Rejection::Forbidden {
            code: ErrorCode::NotYourNotification,
            message: "this notification is not yours".into(),
        });
    }
    if state.read {
        return Ok(Vec::new());
    }
    Ok(vec![NotificationEvent::Read(NotificationRead { notification_id })])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::spec::given;

    #[test]
    fn only_the_owner_marks_read_and_only_once() {
        let (owner, other, id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let read = |by| NotificationCommand::MarkRead { notification_id: id, by };
        let unread = NotificationState { owner, read: false };
        let then = Notification::decide(&Some(unread), read(owner), &());
        assert_eq!(then.as_ref().map(Vec::len), Ok(1));
        let mut state = Some(unread);
        for event in then.as_deref().unwrap_or_default() {
            let recorded = Recorded { event, aggregate_id: "owner", version: 1, occurred_at: chrono::Utc::now() };
            Notification::apply(&mut state, recorded);
        }
        assert_eq!(state, Some(NotificationState { owner, read: true }));
        assert!(Notification::decide(&state, read(owner), &()).expect("no-op").is_empty(), "again: nothing");
        assert!(matches!(
            Notification::decide(&Some(unread), read(other), &()),
            Err(Rejection::Forbidden { code: ErrorCode::NotYourNotification, .. })
        ));
        assert_eq!(given::<Notification>([]).when(read(owner), &()).code(), "notification_not_found");
    }
}
