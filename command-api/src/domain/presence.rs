//! A user's presence (docs/domain.md "Presence and notifications"): a
//! heartbeat says online, going offline says so. Nothing is refused for a
//! live session, so `decide` only names the event.

use events::presence::{PresenceEvent, PresenceSignal};

use super::{Aggregate, Recorded, Rejection};

/// The presence aggregate (keyed by user on `presence-events`). It keeps no
/// state of its own; the write model tracks its version for appends.
#[derive(Debug)]
pub struct Presence;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceCommand {
    Heartbeat,
    GoOffline,
}

impl Aggregate for Presence {
    type State = ();
    type Command = PresenceCommand;
    type Facts = ();
    type Event = PresenceEvent;

    fn decide(_: &(), command: PresenceCommand, _: &()) -> Result<Vec<PresenceEvent>, Rejection> {
        Ok(vec![match command {
            PresenceCommand::Heartbeat => PresenceEvent::Heartbeat(PresenceSignal {}),
            PresenceCommand::GoOffline => PresenceEvent::Offline(PresenceSignal {}),
        }])
    }

    fn apply(_: &mut (), _: Recorded<'_, PresenceEvent>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::spec::given;

    #[test]
    fn a_heartbeat_is_online_and_going_offline_is_offline() {
        let mut presence = given::<Presence>([]);
        assert!(matches!(presence.when(PresenceCommand::Heartbeat, &()).events(), [PresenceEvent::Heartbeat(_)]));
        assert!(matches!(presence.when(PresenceCommand::GoOffline, &()).events(), [PresenceEvent::Offline(_)]));
    }
}
