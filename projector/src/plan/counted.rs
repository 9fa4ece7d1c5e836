//! The counted effects (daily stats, notifications, unread counters, a
//! message's live entries), apart from the per-aggregate documents because
//! they are planned once per event id, not guarded by a version.

use std::collections::BTreeMap;

use events::connection::ConnectionEvent;
use events::message::MessageEvent;
use events::user::UserEvent;
use events::{Envelope, Event};
use mongodb::bson::{Bson, Document, doc};
use views::{LiveUpdate, MessageItem, NotificationItem, collections};

use super::statements::{literal, to_bson};
use super::{Creation, Plan};

/// The effects applied once per event id: daily counts, notifications and
/// unread counters.
pub(super) fn plan_counted(
    plan: &mut Plan,
    unread: &mut BTreeMap<String, i64>,
    per_day: &mut BTreeMap<String, BTreeMap<&'static str, i64>>,
    envelope: &Envelope,
) {
    use events::connection::RequestStatus as S;
    let day = envelope.occurred_at.format("%Y-%m-%d").to_string();
    let stat = match &envelope.event {
        Event::User(UserEvent::Registered(_)) => Some("signups"),
        Event::User(UserEvent::SessionStarted(_)) => Some("logins"),
        Event::Connection(ConnectionEvent::Requested(_)) => Some("requestsSent"),
        Event::Connection(ConnectionEvent::Reviewed(r)) if r.status == S::Accepted => Some("requestsAccepted"),
        Event::Message(MessageEvent::Sent(_)) => Some("messagesSent"),
        _ => None,
    };
    if let Some(field) = stat {
        *per_day.entry(day).or_default().entry(field).or_insert(0) += 1;
    }
    if let Event::Message(MessageEvent::Sent(m)) = &envelope.event {
        let item = MessageItem::just_sent(m, envelope.occurred_at);
        plan.stream.push((m.from_user_id.to_string(), LiveUpdate::Message(item.clone())));
        plan.stream.push((m.to_user_id.to_string(), LiveUpdate::Message(item)));
    }
    if let Some((owner, kind)) = events::notification::notified_by(envelope) {
        let (request_id, message_id, from) = match &envelope.event {
            Event::Connection(ConnectionEvent::Requested(r)) => (Some(r.request_id), None, r.from_user_id),
            Event::Connection(ConnectionEvent::Reviewed(r)) => {
                (Some(r.request_id), None, envelope.metadata.actor.unwrap_or_default())
            }
            Event::Message(MessageEvent::Sent(m)) => (None, Some(m.message_id), m.from_user_id),
            _ => (None, None, uuid::Uuid::nil()),
        };
        let doc = views::NotificationDoc {
            notification_id: envelope.event_id.to_string(),
            user_id: owner.to_string(),
            kind: kind.to_owned(),
            from_user_id: from.to_string(),
            request_id: request_id.map(|r| r.to_string()),
            message_id: message_id.map(|m| m.to_string()),
            created_at: envelope.occurred_at,
            read_at: None,
        };
        // Topics are ordered only within themselves: in a rebuild, the
        // read (notification-events) may arrive before the event that
        // notified (connection- or message-events). So creating keeps a
        // `readAt` already there, and reading upserts: either order ends in
        // the same document.
        let mut fields: Document = match to_bson(&doc) {
            Bson::Document(fields) => fields
                .into_iter()
                .filter(|(name, _)| name != "_id")
                .map(|(name, value)| (name, literal(value)))
                .collect(),
            _ => Document::new(),
        };
        fields.insert("readAt", doc! { "$ifNull": ["$readAt", Bson::Null] });
        let otherwise = doc! { "q": { "_id": &doc.notification_id }, "u": [ { "$set": fields } ], "upsert": true };
        if let Bson::Document(document) = to_bson(&doc) {
            let creation = Creation { id: doc.notification_id.clone(), document, otherwise };
            plan.creations.entry(collections::NOTIFICATIONS).or_default().push(creation);
        }
        // The same type as GET /v1/notifications items.
        plan.stream.push((doc.user_id.clone(), LiveUpdate::Notification(NotificationItem::from(doc.clone()))));
        *unread.entry(doc.user_id).or_insert(0) += 1;
    }
    if let Event::Notification(events::NotificationEvent::Read(r)) = &envelope.event {
        plan.notifications.push(doc! {
            "q": { "_id": r.notification_id.to_string() },
            "u": { "$set": { "readAt": to_bson(&envelope.occurred_at) } },
            "upsert": true,
        });
        *unread.entry(envelope.aggregate_id.clone()).or_insert(0) -= 1;
    }
}
