//! The conversation aggregate: private messages between two connected users
//! (docs/domain.md "Messages").

use chrono::{DateTime, Utc};
use events::message::{MessageDelivered, MessageEvent, MessageRead, MessageSent};
use platform::error_code::ErrorCode;
use uuid::Uuid;

use super::{Aggregate, Recorded, Rejection};

/// One message of a conversation. Its events are appended under the
/// conversation (the pair) on `message-events`; the state is per message.
#[derive(Debug)]
pub struct Message;

#[derive(Debug, Clone)]
pub enum MessageCommand {
    Send { message_id: Uuid, from: Uuid, to: Uuid, text: String },
    MarkDelivered { message_id: Uuid, by: Uuid },
    MarkRead { message_id: Uuid, by: Uuid },
}

impl Aggregate for Message {
    /// `None` until sent.
    type State = Option<MessageState>;
    type Command = MessageCommand;
    type Facts = MessageFacts;
    type Event = MessageEvent;

    fn decide(
        state: &Self::State,
        command: MessageCommand,
        facts: &MessageFacts,
    ) -> Result<Vec<MessageEvent>, Rejection> {
        match command {
            MessageCommand::Send { message_id, from, to, text } => decide_send(facts, message_id, from, to, text),
            MessageCommand::MarkDelivered { message_id, by } => {
                decide_delivered(state.as_ref(), message_id, by, facts.now)
            }
            MessageCommand::MarkRead { message_id, by } => decide_read(state.as_ref(), message_id, by, facts.now),
        }
    }

    fn apply(state: &mut Self::State, recorded: Recorded<'_, MessageEvent>) {
        match recorded.event {
            MessageEvent::Sent(m) => {
                *state = Some(MessageState {
                    pair: recorded.aggregate_id.to_owned(),
                    from: m.from_user_id,
                    to: m.to_user_id,
                    delivered: false,
                    read: false,
                });
            }
            MessageEvent::Delivered(_) => {
                if let Some(m) = state {
                    m.delivered = true;
                }
            }
            // Reading implies delivery.
            MessageEvent::Read(_) => {
                if let Some(m) = state {
                    m.delivered = true;
                    m.read = true;
                }
            }
        }
    }
}

const TEXT_MAX_CHARS: usize = 2000;

/// What the write model remembers of one message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageState {
    pub pair: String,
    pub from: Uuid,
    pub to: Uuid,
    pub delivered: bool,
    pub read: bool,
}

/// Facts about the two users that a send is decided on, and the time.
#[derive(Debug, Clone, Copy)]
pub struct MessageFacts {
    pub recipient_exists: bool,
    /// An accepted connection between the two.
    pub connected: bool,
    pub now: DateTime<Utc>,
}

impl MessageFacts {
    /// For marking a message, which reads nothing about the users.
    pub fn at(now: DateTime<Utc>) -> Self {
        Self { recipient_exists: true, connected: true, now }
    }
}

fn decide_send(
    facts: &MessageFacts,
    message_id: Uuid,
    from: Uuid,
    to: Uuid,
    text: String,
) -> Result<Vec<MessageEvent>, Rejection> {
    if text.trim().is_empty() {
        return Err(Rejection::invalid(ErrorCode::TextEmpty, "text must not be empty"));
    }
    if text.chars().count() > TEXT_MAX_CHARS {
        return Err(Rejection::invalid(ErrorCode::TextTooLong, "text must be at most 2000 characters"));
    }
    if from == to {
        return Err(Rejection::invalid(ErrorCode::CannotMessageSelf, "you cannot message yourself"));
    }
    if !facts.recipient_exists {
        return Err(Rejection::NotFound { code: ErrorCode::UserNotFound, message: "no such user".into() });
    }
    if !facts.connected {
        return Err(Rejection::Forbidden {
            code: ErrorCode::NotConnected,
            message: "messages are only between connected users".into(),
        });
    }
    Ok(vec![MessageEvent::Sent(MessageSent { message_id, from_user_id: from, to_user_id: to, text })])
}

/// Marks a message delivered to the recipient: sent → delivered → read.
/// Again, or after it was read (which implies delivery), changes nothing.
fn decide_delivered(
    message: Option<&MessageState>,
    message_id: Uuid,
    recipient: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<MessageEvent>, Rejection> {
    let message = message
        .ok_or_else(|| Rejection::NotFound { code: ErrorCode::MessageNotFound, message: "no such message".into() })?;
    if message.to != recipient {
        return Err(Rejection::Forbidden {
            code: ErrorCode::NotMessageRecipient,
            message: "only the recipient marks a message delivered".into(),
        });
    }
    if message.delivered || message.read {
        return Ok(Vec::new());
    }
    Ok(vec![MessageEvent::Delivered(MessageDelivered { message_id, delivered_at: now })])
}

/// Marks a message read. Reading it again changes nothing (no event).
fn decide_read(
    message: Option<&MessageState>,
    message_id: Uuid,
    reader: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<MessageEvent>, Rejection> {
    let message = message
        .ok_or_else(|| Rejection::NotFound { code: ErrorCode::MessageNotFound, message: "no such message".into() })?;
    if message.to != reader {
        return Err(Rejection::Forbidden {
            code: ErrorCode::NotMessageRecipient,
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
    use super::*;
    use crate::domain::spec::given;
    use events::message::MessageSent;

    fn connected() -> MessageFacts {
        MessageFacts::at(Utc::now())
    }

    fn send(from: Uuid, to: Uuid, text: &str) -> MessageCommand {
        MessageCommand::Send { message_id: Uuid::new_v4(), from, to, text: text.to_owned() }
    }

    fn sent(id: Uuid, from: Uuid, to: Uuid) -> MessageEvent {
        MessageEvent::Sent(MessageSent { message_id: id, from_user_id: from, to_user_id: to, text: "hi".into() })
    }

    #[test]
    fn text_is_one_to_two_thousand_characters() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut nothing = given::<Message>([]);
        assert!(nothing.when(send(a, b, "x"), &connected()).decided.is_ok());
        assert!(nothing.when(send(a, b, &"é".repeat(2000)), &connected()).decided.is_ok());
        assert_eq!(nothing.when(send(a, b, "  "), &connected()).code(), "text_empty");
        assert_eq!(nothing.when(send(a, b, &"x".repeat(2001)), &connected()).code(), "text_too_long");
    }

    #[test]
    fn only_between_connected_users() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut nothing = given::<Message>([]);
        let strangers = MessageFacts { connected: false, ..connected() };
        assert_eq!(nothing.when(send(a, b, "hi"), &strangers).code(), "not_connected");
        let nobody = MessageFacts { recipient_exists: false, connected: false, ..connected() };
        assert_eq!(nothing.when(send(a, b, "hi"), &nobody).code(), "user_not_found");
        assert_eq!(nothing.when(send(a, a, "hi"), &connected()).code(), "cannot_message_self");
    }

    #[test]
    fn delivery_is_marked_once_by_the_recipient_and_read_implies_it() {
        let (a, b, id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let deliver = |by| MessageCommand::MarkDelivered { message_id: id, by };
        let mut message = given::<Message>([sent(id, a, b)]);
        assert_eq!(message.when(deliver(a), &connected()).code(), "not_message_recipient");
        assert_eq!(given::<Message>([]).when(deliver(b), &connected()).code(), "message_not_found");
        let delivered = message.when(deliver(b), &connected());
        assert_eq!(delivered.events().len(), 1);
        assert!(delivered.state.as_ref().is_some_and(|m| m.delivered && !m.read));
        assert!(message.when(deliver(b), &connected()).events().is_empty(), "again: nothing");
        let mut read = given::<Message>([sent(id, a, b)]);
        read.when(MessageCommand::MarkRead { message_id: id, by: b }, &connected()).events();
        assert!(read.when(deliver(b), &connected()).events().is_empty(), "read implies delivered");
    }

    #[test]
    fn only_the_recipient_marks_read_and_only_once() {
        let (a, b, id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let read = |by| MessageCommand::MarkRead { message_id: id, by };
        let mut message = given::<Message>([sent(id, a, b)]);
        assert_eq!(message.when(read(a), &connected()).code(), "not_message_recipient");
        assert_eq!(given::<Message>([]).when(read(b), &connected()).code(), "message_not_found");
        let first = message.when(read(b), &connected());
        assert_eq!(first.events().len(), 1);
        assert!(first.state.as_ref().is_some_and(|m| m.delivered && m.read && m.pair == "aggregate"));
        assert!(message.when(read(b), &connected()).events().is_empty());
    }
}
