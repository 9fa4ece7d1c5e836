//! Planning for the message aggregate (one per conversation): sent,
//! delivered and read, and the conversations whose cache to update.

use events::Envelope;
use events::message::MessageEvent;
use mongodb::bson::{Bson, doc};
use views::{MessageDoc, collections};

use super::Plan;
use super::statements::{create, if_newer, literal, set_if_newer, to_bson};

pub(super) fn plan_message_event(plan: &mut Plan, envelope: &Envelope, event: &MessageEvent) {
    let version = envelope.aggregate_version;
    let pair = envelope.aggregate_id.as_str();
    match event {
        MessageEvent::Sent(m) => {
            let doc = MessageDoc {
                message_id: m.message_id.to_string(),
                pair_key: pair.to_owned(),
                from_user_id: m.from_user_id.to_string(),
                to_user_id: m.to_user_id.to_string(),
                text: m.text.clone(),
                sent_at: envelope.occurred_at,
                delivered_at: None,
                read_at: None,
                version,
            };
            create(plan, collections::MESSAGES, &doc.message_id, version, to_bson(&doc));
        }
        MessageEvent::Delivered(d) => {
            let at = to_bson(&d.delivered_at);
            plan.messages.push(set_if_newer(&d.message_id.to_string(), version, doc! { "deliveredAt": at }));
        }
        MessageEvent::Read(r) => {
            // Read implies delivered: keep an earlier delivery time, else
            // delivered when read.
            let at = literal(to_bson(&r.read_at));
            let newer = |value: Bson, field: &str| if_newer(version, value, &format!("${field}"));
            let set = doc! {
                "readAt": newer(at.clone(), "readAt"),
                "deliveredAt": newer(Bson::Document(doc! { "$ifNull": ["$deliveredAt", at] }), "deliveredAt"),
                "version": { "$max": [ { "$ifNull": ["$version", 0_i64] }, version as i64 ] },
            };
            plan.messages
                .push(doc! { "q": { "_id": r.message_id.to_string() }, "u": [ { "$set": set } ], "upsert": false });
        }
    }
    let message_id = match event {
        MessageEvent::Sent(m) => m.message_id,
        MessageEvent::Delivered(d) => d.message_id,
        MessageEvent::Read(r) => r.message_id,
    };
    plan.touched_conversations.entry(pair.to_owned()).or_default().insert(message_id.to_string());
}
