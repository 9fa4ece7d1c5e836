//! Planning for presence (one aggregate per user): the presence document
//! of every heartbeat or going offline, and the online state changes a
//! batch publishes live, which need what the store held (`Prior`).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use events::Envelope;
use events::presence::PresenceEvent;
use views::{PresenceDoc, PresenceView};

use super::statements::{replace_if_newer, to_bson};
use super::{Plan, PresenceState, Prior};

/// `presence_ttl`: how long a heartbeat keeps the user online. `fresh`: the
/// record is at or past its partition's stored checkpoint, so its change of
/// state may be published (once-only, `Plan::fence`).
pub(super) fn plan_presence_event(
    plan: &mut Plan,
    changes: &mut PresenceChanges,
    prior: &Prior,
    envelope: &Envelope,
    event: &PresenceEvent,
    presence_ttl: chrono::Duration,
    fresh: bool,
) {
    let at = envelope.occurred_at;
    let online_until = match event {
        PresenceEvent::Heartbeat(_) => at + presence_ttl,
        PresenceEvent::Offline(_) => at,
    };
    if fresh {
        let online = matches!(event, PresenceEvent::Heartbeat(_));
        changes.observe(prior, envelope, online_until, online);
    }
    let doc = PresenceDoc {
        user_id: envelope.aggregate_id.clone(),
        last_seen: at,
        online_until,
        version: envelope.aggregate_version,
    };
    plan.presence.push(replace_if_newer(&doc.user_id, doc.version, to_bson(&doc)));
    plan.touched_presence.insert(doc.user_id);
}

/// Per user, the online state before the batch's first presence event
/// (at that event's time) and after its last: a live entry only when they
/// differ, so a heartbeat of a user already online publishes nothing, and
/// a batch publishes at most one entry per user however many heartbeats it
/// holds. Only events newer than the stored document count (a re-driven or
/// re-read one is stale and changes nothing).
#[derive(Debug, Default)]
pub(super) struct PresenceChanges {
    state: HashMap<String, PresenceState>,
    /// user → (online before, online after, entry after).
    changes: BTreeMap<String, (bool, bool, PresenceView)>,
}

impl PresenceChanges {
    fn observe(&mut self, prior: &Prior, envelope: &Envelope, online_until: DateTime<Utc>, online: bool) {
        let user = &envelope.aggregate_id;
        let before = self.state.get(user).or_else(|| prior.presence.get(user)).copied();
        if before.is_some_and(|b| b.version >= envelope.aggregate_version) {
            return;
        }
        let was_online = before.is_some_and(|b| b.online_until > envelope.occurred_at);
        self.state.insert(user.clone(), PresenceState { version: envelope.aggregate_version, online_until });
        let entry = PresenceView { user_id: user.clone(), online, last_seen: Some(envelope.occurred_at) };
        let change = self.changes.entry(user.clone()).or_insert((was_online, online, entry.clone()));
        change.1 = online;
        change.2 = entry;
    }

    pub(super) fn into_entries(self) -> Vec<(String, PresenceView)> {
        self.changes
            .into_iter()
            .filter(|(_, (before, after, _))| before != after)
            .map(|(u, (_, _, e))| (u, e))
            .collect()
    }
}
