//! Planning for the user aggregate: profiles, credentials, sessions and
//! memberships, into the users and sessions collections.

use events::Envelope;
use events::user::{Profile, UserEvent};
use mongodb::bson::{Bson, Document, doc};
use views::{SessionDoc, UserDoc, collections};

use super::Plan;
use super::statements::{create, set_if_newer, to_bson};

fn profile_fields(profile: &Profile) -> Document {
    match to_bson(profile) {
        Bson::Document(d) => d,
        _ => Document::new(),
    }
}

pub(super) fn plan_user_event(plan: &mut Plan, envelope: &Envelope, event: &UserEvent) {
    let version = envelope.aggregate_version;
    let user_id = envelope.aggregate_id.as_str();
    let at = envelope.occurred_at;
    match event {
        UserEvent::Registered(r) => {
            let doc = UserDoc {
                user_id: user_id.to_owned(),
                email_id: r.email_id.clone(),
                first_name: r.profile.first_name.clone(),
                last_name: r.profile.last_name.clone(),
                age: r.profile.age,
                gender: r.profile.gender,
                about: r.profile.about.clone(),
                skills: r.profile.skills.clone(),
                photo_url: r.profile.photo_url.clone(),
                membership: "free".to_owned(),
                created_at: at,
                updated_at: at,
                version,
            };
            create(plan, collections::USERS, user_id, version, to_bson(&doc));
            plan.touched_users.insert(user_id.to_owned());
            plan.registered.push(user_id.to_owned());
        }
        // The password hash is the command API's alone (docs/design.md §5). The
        // event still advances the version, so later events stay ordered.
        // So does a refresh: the refresh number lives in the write model only.
        UserEvent::CredentialsSet(_) | UserEvent::SessionRefreshed(_) => {
            plan.users.push(set_if_newer(user_id, version, Document::new()));
            // The cached copy carries the version too: it stays an exact
            // copy of the document, whatever order the events came in.
            plan.touched_users.insert(user_id.to_owned());
        }
        UserEvent::ProfileUpdated(p) => {
            let mut fields = profile_fields(&p.profile);
            fields.insert("updatedAt", to_bson(&at));
            plan.users.push(set_if_newer(user_id, version, fields));
            plan.touched_users.insert(user_id.to_owned());
        }
        UserEvent::SessionStarted(s) => {
            let doc = SessionDoc {
                session_id: s.session_id.to_string(),
                user_id: user_id.to_owned(),
                expires_at: s.expires_at,
                revoked: false,
                version,
            };
            create(plan, collections::SESSIONS, &doc.session_id, version, to_bson(&doc));
            plan.touched_sessions.insert(doc.session_id);
            plan.users.push(set_if_newer(user_id, version, Document::new()));
            plan.touched_users.insert(user_id.to_owned());
        }
        UserEvent::SessionsRevoked(r) => {
            for id in &r.session_ids {
                let id = id.to_string();
                plan.sessions.push(set_if_newer(&id, version, doc! { "revoked": true }));
                plan.touched_sessions.insert(id);
            }
            plan.users.push(set_if_newer(user_id, version, Document::new()));
            plan.touched_users.insert(user_id.to_owned());
        }
        UserEvent::MembershipChanged(m) => {
            plan.users.push(set_if_newer(user_id, version, doc! { "membership": m.tier.as_str() }));
            plan.touched_users.insert(user_id.to_owned());
        }
        // Bookkeeping of the write side's daily limit: no view shows it, but
        // the user's version moves on like any other event's, and so does
        // the cached copy (a rebuild caches the document as it ends).
        UserEvent::RequestSlotReserved(_) => {
            plan.users.push(set_if_newer(user_id, version, Document::new()));
            plan.touched_users.insert(user_id.to_owned());
        }
    }
}
