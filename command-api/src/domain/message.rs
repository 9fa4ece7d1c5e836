//! The conversation aggregate: private messages between two connected users
//! (docs/domain.md "Messages").

use chrono::{DateTime, Utc};
use events::message::{MessageDelivered, MessageEvent, MessageRead, MessageSent};
use uuid::Uuid;

use super::Rejection;

const TEXT_MAX_CHARS: usize = 2000;

/// What the write model remembers of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageState {
    pub pair: String,
    pub from: Uuid,
    pub to: Uuid,
    pub delivered: bool,
    pub read: bool,
}

/// Facts about the two users that a send is decided on.
#[derive(Debug, Clone, Copy)]
pub struct SendFacts {
    pub recipient_exists: bool,
    /// An accepted connection between the two.
    pub connected: bool,
}

pub fn decide_send(
    facts: SendFacts,
    message_id: Uuid,
    from: Uuid,
    to: Uuid,
    text: String,
) -> Result<Vec<MessageEvent>, Rejection> {
    if text.trim().is_empty() {
        return Err(Rejection::invalid("text_empty", "text must not be empty"));
    }
    if text.chars().count() > TEXT_MAX_CHARS {
        return Err(Rejection::invalid("text_too_long", "text must be at most 2000 characters"));
    }
    if from == to {
        return Err(Rejection::invalid("cannot_message_self", "you cannot message yourself"));
    }
    if !facts.recipient_exists {
        return Err(Rejection::NotFound { code: "user_not_found", message: "no such user".into() });
    }
    if !facts.connected {
        return Err(Rejection::Forbidden {
            code: "not_connected",
            message: "messages are only between connected users".into(),
        });
    }
    Ok(vec![MessageEvent::Sent(MessageSent { message_id, from_user_id: from, to_user_id: to, text })])
}

/// Marks a message delivered to the recipient: sent → delivered → read.
/// Again, or after it was read (which implies delivery), changes nothing.
pub fn decide_delivered(
    message: Option<&MessageState>,
    message_id: Uuid,
    recipient: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<MessageEvent>, Rejection> {
    let message =
        message.ok_or_else(|| Rejection::NotFound { code: "message_not_found", message: "no such message".into() })?;
    if message.to != recipient {
        return Err(Rejection::Forbidden {
            code: "not_message_recipient",
            message: "only the recipient marks a message delivered".into(),
        });
    }
    if message.delivered || message.read {
        return Ok(Vec::new());
    }
    Ok(vec![MessageEvent::Delivered(MessageDelivered { message_id, delivered_at: now })])
}

/// Marks a message read. Reading it again changes nothing (no event).
pub fn decide_read(
    message: Option<&MessageState>,
    message_id: Uuid,
    reader: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<MessageEvent>, Rejection> {
    let message =
        message.ok_or_else(|| Rejection::NotFound { code: "message_not_found", message: "no such message".into() })?;
    if message.to != reader {
        return Err(Rejection::Forbidden {
            code: "not_message_recipient",
            message: "only the recipient marks a message read".into(),
        });
    }
    if message.read {
        return Ok(Vec::new());
    }
    Ok(vec![MessageEvent::Read(MessageRead { message_id, read_at: now })])
}

#[cfg(test)]
mod tests {
    #[test]
    fn delivery_is_marked_once_by_the_recipient_and_read_implies_it() {
        let (a, b, id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let sent = MessageState { pair: "p".into(), from: a, to: b, delivered: false, read: false };
        assert!(matches!(decide_delivered(Some(&sent), id, a, Utc::now()), Err(Rejection::Forbidden { .. })));
        assert!(matches!(decide_delivered(None, id, b, Utc::now()), Err(Rejection::NotFound { .. })));
        assert_eq!(decide_delivered(Some(&sent), id, b, Utc::now()).expect("delivers").len(), 1);
        let delivered = MessageState { delivered: true, ..sent.clone() };
        assert!(decide_delivered(Some(&delivered), id, b, Utc::now()).expect("no-op").is_empty());
        let read = MessageState { read: true, ..sent };
        assert!(decide_delivered(Some(&read), id, b, Utc::now()).expect("no-op").is_empty());
    }

    use super::*;

    const CONNECTED: SendFacts = SendFacts { recipient_exists: true, connected: true };

    fn code(result: Result<Vec<MessageEvent>, Rejection>) -> &'static str {
        match result {
            Err(
                Rejection::Invalid { code, .. } | Rejection::NotFound { code, .. } | Rejection::Forbidden { code, .. },
            ) => code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn text_is_one_to_two_thousand_characters() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(decide_send(CONNECTED, Uuid::new_v4(), a, b, "x".into()).is_ok());
        assert!(decide_send(CONNECTED, Uuid::new_v4(), a, b, "é".repeat(2000)).is_ok());
        assert_eq!(code(decide_send(CONNECTED, Uuid::new_v4(), a, b, "  ".into())), "text_empty");
        assert_eq!(code(decide_send(CONNECTED, Uuid::new_v4(), a, b, "x".repeat(2001))), "text_too_long");
    }

    #[test]
    fn only_between_connected_users() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let strangers = SendFacts { recipient_exists: true, connected: false };
        assert_eq!(code(decide_send(strangers, Uuid::new_v4(), a, b, "hi".into())), "not_connected");
        let nobody = SendFacts { recipient_exists: false, connected: false };
        assert_eq!(code(decide_send(nobody, Uuid::new_v4(), a, b, "hi".into())), "user_not_found");
        assert_eq!(code(decide_send(CONNECTED, Uuid::new_v4(), a, a, "hi".into())), "cannot_message_self");
    }

    #[test]
    fn only_the_recipient_marks_read_and_only_once() {
        let (a, b, id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let unread = MessageState { pair: "p".into(), from: a, to: b, delivered: false, read: false };
        assert_eq!(code(decide_read(Some(&unread), id, a, Utc::now())), "not_message_recipient");
        assert_eq!(code(decide_read(None, id, b, Utc::now())), "message_not_found");
        assert_eq!(decide_read(Some(&unread), id, b, Utc::now()).expect("reads").len(), 1);
        let read = MessageState { read: true, ..unread };
        assert!(decide_read(Some(&read), id, b, Utc::now()).expect("no-op").is_empty());
    }
}
