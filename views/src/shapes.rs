//! The read shapes both programs produce: the query API answers with them,
//! and the projector publishes them on users' live streams. One type per
//! shape, serialised in both places, so a stream entry cannot drift from
//! what `GET /v1/notifications`, `GET /v1/messages/{otherUserId}` and
//! `GET /v1/presence/{userId}` return (docs/api.md, "Live stream").
//!
//! With the `openapi` feature (the query API's), each derives its OpenAPI
//! schema too.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::documents::{MessageDoc, NotificationDoc};

/// A notification: an item of `GET /v1/notifications`, and the `data:` of a
/// `notification` stream event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NotificationItem {
    pub notification_id: String,
    /// connection_request, request_accepted or message.
    #[serde(rename = "type")]
    pub kind: String,
    pub from_user_id: String,
    pub request_id: Option<String>,
    pub message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

impl From<NotificationDoc> for NotificationItem {
    fn from(n: NotificationDoc) -> Self {
        Self {
            notification_id: n.notification_id,
            kind: n.kind,
            from_user_id: n.from_user_id,
            request_id: n.request_id,
            message_id: n.message_id,
            created_at: n.created_at,
            read_at: n.read_at,
        }
    }
}

/// A message: an item of `GET /v1/messages/{otherUserId}`, and the `data:`
/// of a `message` stream event (a message just sent: neither delivered nor
/// read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MessageItem {
    pub message_id: String,
    pub from_user_id: String,
    pub to_user_id: String,
    pub text: String,
    pub sent_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub read_at: Option<DateTime<Utc>>,
}

impl MessageItem {
    /// A message as its `message.sent` event says: neither delivered nor
    /// read yet.
    pub fn just_sent(sent: &events::message::MessageSent, at: DateTime<Utc>) -> Self {
        Self {
            message_id: sent.message_id.to_string(),
            from_user_id: sent.from_user_id.to_string(),
            to_user_id: sent.to_user_id.to_string(),
            text: sent.text.clone(),
            sent_at: at,
            delivered_at: None,
            read_at: None,
        }
    }
}

impl From<MessageDoc> for MessageItem {
    fn from(m: MessageDoc) -> Self {
        Self {
            message_id: m.message_id,
            from_user_id: m.from_user_id,
            to_user_id: m.to_user_id,
            text: m.text,
            sent_at: m.sent_at,
            delivered_at: m.delivered_at,
            read_at: m.read_at,
        }
    }
}

/// Whether a user is online: the answer of `GET /v1/presence/{userId}`, and
/// the `data:` of a `presence` stream event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PresenceView {
    pub user_id: String,
    pub online: bool,
    /// The last heartbeat or going offline; null if never seen.
    pub last_seen: Option<DateTime<Utc>>,
}

/// One entry of a user's live stream (`GET /v1/stream`): the SSE `event:`
/// is its `kind`, the `data:` its item as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveUpdate {
    Notification(NotificationItem),
    Message(MessageItem),
    Presence(PresenceView),
}

impl LiveUpdate {
    /// The SSE event name, stored as the stream entry's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            LiveUpdate::Notification(_) => "notification",
            LiveUpdate::Message(_) => "message",
            LiveUpdate::Presence(_) => "presence",
        }
    }

    /// The item as JSON, stored as the stream entry's `data`.
    pub fn data(&self) -> String {
        let json = match self {
            LiveUpdate::Notification(item) => serde_json::to_string(item),
            LiveUpdate::Message(item) => serde_json::to_string(item),
            LiveUpdate::Presence(item) => serde_json::to_string(item),
        };
        // Plain strings, options and times: serialising cannot fail.
        json.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_entries_carry_the_rest_shapes() {
        let at = "2025-01-02T03:04:05Z".parse::<DateTime<Utc>>().expect("time");
        let message = LiveUpdate::Message(MessageItem {
            message_id: "m".into(),
            from_user_id: "a".into(),
            to_user_id: "b".into(),
            text: "hi".into(),
            sent_at: at,
            delivered_at: None,
            read_at: None,
        });
        assert_eq!(message.kind(), "message");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&message.data()).expect("json"),
            serde_json::json!({
                "messageId": "m", "fromUserId": "a", "toUserId": "b", "text": "hi",
                "sentAt": "2025-01-02T03:04:05Z", "deliveredAt": null, "readAt": null,
            })
        );
        let notification = LiveUpdate::Notification(NotificationItem {
            notification_id: "n".into(),
            kind: "message".into(),
            from_user_id: "a".into(),
            request_id: None,
            message_id: Some("m".into()),
            created_at: at,
            read_at: None,
        });
        assert_eq!(notification.kind(), "notification");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&notification.data()).expect("json"),
            serde_json::json!({
                "notificationId": "n", "type": "message", "fromUserId": "a", "requestId": null,
                "messageId": "m", "createdAt": "2025-01-02T03:04:05Z", "readAt": null,
            })
        );
        let presence = LiveUpdate::Presence(PresenceView { user_id: "a".into(), online: true, last_seen: Some(at) });
        assert_eq!(presence.kind(), "presence");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&presence.data()).expect("json"),
            serde_json::json!({ "userId": "a", "online": true, "lastSeen": "2025-01-02T03:04:05Z" })
        );
    }
}
