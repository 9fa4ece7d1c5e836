//! Planning for the connection aggregate (one per pair of users): requests,
//! their reviews, and the relations and connection lists an acceptance adds.

use events::Envelope;
use events::connection::{ConnectionEvent, RequestStatus};
use mongodb::bson::{Document, doc};
use views::{ConnectionDoc, ConnectionRequestDoc, collections};

use super::Plan;
use super::statements::{create, set_if_newer, to_bson};

/// `{_id: user}` gets `other` added to the set `field`.
fn add_to_set(user: &str, field: &str, other: &str) -> Document {
    doc! { "q": { "_id": user }, "u": { "$addToSet": { field: other } }, "upsert": true }
}

pub(super) fn plan_connection_event(plan: &mut Plan, envelope: &Envelope, event: &ConnectionEvent) {
    let version = envelope.aggregate_version;
    let pair = envelope.aggregate_id.as_str();
    match event {
        ConnectionEvent::Requested(r) => {
            let doc = ConnectionRequestDoc {
                request_id: r.request_id.to_string(),
                pair_key: pair.to_owned(),
                from_user_id: r.from_user_id.to_string(),
                to_user_id: r.to_user_id.to_string(),
                status: r.status.as_str().to_owned(),
                created_at: envelope.occurred_at,
                reviewed_at: None,
                version,
            };
            create(plan, collections::CONNECTION_REQUESTS, &doc.request_id, version, to_bson(&doc));
            plan.relations.push(add_to_set(&doc.from_user_id, "related", &doc.to_user_id));
            plan.relations.push(add_to_set(&doc.to_user_id, "related", &doc.from_user_id));
            plan.related_added.push((doc.from_user_id.clone(), doc.to_user_id.clone()));
            plan.related_added.push((doc.to_user_id.clone(), doc.from_user_id.clone()));
        }
        ConnectionEvent::Reviewed(r) => {
            let fields = doc! { "status": r.status.as_str(), "reviewedAt": to_bson(&r.reviewed_at) };
            plan.requests.push(set_if_newer(&r.request_id.to_string(), version, fields));
            // The pair key names both users, so the projector needs no lookup.
            if let (RequestStatus::Accepted, Some((a, b))) = (r.status, pair.split_once(':')) {
                plan.relations.push(add_to_set(a, "connections", b));
                plan.relations.push(add_to_set(b, "connections", a));
                // Each side's ordered list: connected at the acceptance's
                // time, the same in every rebuild.
                for (user, other) in [(a, b), (b, a)] {
                    let doc = ConnectionDoc {
                        id: ConnectionDoc::id_for(user, other),
                        user_id: user.to_owned(),
                        other_user_id: other.to_owned(),
                        request_id: r.request_id.to_string(),
                        connected_at: envelope.occurred_at,
                        version,
                    };
                    plan.connections_added.push((doc.user_id.clone(), doc.cache_member()));
                    create(plan, collections::CONNECTIONS, &doc.id, version, to_bson(&doc));
                }
            }
        }
    }
}
