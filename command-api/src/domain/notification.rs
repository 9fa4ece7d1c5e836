//! Marking a notification read (docs/domain.md "Presence and notifications").

use events::notification::{NotificationEvent, NotificationRead};
use uuid::Uuid;

use super::Rejection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationState {
    pub owner: Uuid,
    pub read: bool,
}

/// Only the notified user marks it read; marking it again changes nothing.
pub fn decide_read(
    state: Option<NotificationState>,
    notification_id: Uuid,
    reader: Uuid,
) -> Result<Vec<NotificationEvent>, Rejection> {
    let state = state.ok_or_else(|| Rejection::NotFound {
        code: "notification_not_found",
        message: "no such notification".into(),
    })?;
    if state.owner != reader {
        return Err(Rejection::Forbidden {
            code: "not_your_notification",
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

    #[test]
    fn only_the_owner_marks_read_and_only_once() {
        let (owner, other, id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let unread = NotificationState { owner, read: false };
        assert_eq!(decide_read(Some(unread), id, owner).expect("reads").len(), 1);
        assert!(matches!(
            decide_read(Some(unread), id, other),
            Err(Rejection::Forbidden { code: "not_your_notification", .. })
        ));
        assert!(matches!(
            decide_read(None, id, owner),
            Err(Rejection::NotFound { code: "notification_not_found", .. })
        ));
        let read = NotificationState { read: true, ..unread };
        assert!(decide_read(Some(read), id, owner).expect("no-op").is_empty());
    }
}
