//! Given/when/then for every aggregate's tests (after cqrs-es'
//! `TestFramework`): given these events, when this command with these facts,
//! then these events or this refusal.

use chrono::{DateTime, Duration, Utc};

use super::{Aggregate, Recorded, Rejection};

/// The state after a history of events, folded in order a millisecond
/// apart (starting ten seconds ago), versions 1, 2, ...
pub struct Given<A: Aggregate> {
    history: Vec<A::Event>,
}

pub fn given<A: Aggregate>(history: impl IntoIterator<Item = A::Event>) -> Given<A> {
    Given { history: history.into_iter().collect() }
}

fn fold<A: Aggregate>(history: &[A::Event]) -> A::State {
    let start: DateTime<Utc> = Utc::now() - Duration::seconds(10);
    let mut state = A::State::default();
    for (i, event) in history.iter().enumerate() {
        let recorded = Recorded {
            event,
            aggregate_id: "aggregate",
            version: i as u64 + 1,
            occurred_at: start + Duration::milliseconds(i as i64),
        };
        A::apply(&mut state, recorded);
    }
    state
}

impl<A: Aggregate> Given<A>
where
    A::Event: Clone,
{
    pub fn state(&self) -> A::State {
        fold::<A>(&self.history)
    }

    /// Decides `command`; on success its events join the history.
    pub fn when(&mut self, command: A::Command, facts: &A::Facts) -> Then<A> {
        let decided = A::decide(&self.state(), command, facts);
        if let Ok(events) = &decided {
            self.history.extend(events.iter().cloned());
        }
        Then { decided, state: self.state() }
    }
}

/// What a command decided, and the state once its events are folded in.
pub struct Then<A: Aggregate> {
    pub decided: Result<Vec<A::Event>, Rejection>,
    pub state: A::State,
}

impl<A: Aggregate> Then<A>
where
    A::Event: std::fmt::Debug,
{
    pub fn events(&self) -> &[A::Event] {
        match &self.decided {
            Ok(events) => events,
            Err(rejection) => panic!("expected events, the command was refused: {rejection:?}"),
        }
    }

    pub fn rejection(&self) -> &Rejection {
        match &self.decided {
            Err(rejection) => rejection,
            Ok(events) => panic!("expected a refusal, the command decided {events:?}"),
        }
    }

    /// The refusal's machine-readable code (`session_not_active` for that one).
    pub fn code(&self) -> &'static str {
        match self.rejection() {
            Rejection::Invalid { code, .. }
            | Rejection::Conflict { code, .. }
            | Rejection::NotFound { code, .. }
            | Rejection::Forbidden { code, .. }
            | Rejection::LimitReached { code, .. } => code.as_str(),
            Rejection::SessionNotActive => "session_not_active",
        }
    }
}
