//! The connection aggregate: one per pair of users (docs/domain.md "Connections").

use chrono::{DateTime, Duration, Utc};
use events::connection::{ConnectionEvent, ConnectionRequested, ConnectionReviewed, RequestStatus};
use events::user::Tier;
use platform::error_code::ErrorCode;
use uuid::Uuid;

use super::{Aggregate, Recorded, Rejection};

/// The connection aggregate (keyed by the pair on `connection-events`).
#[derive(Debug)]
pub struct Connection;

impl Aggregate for Connection {
    /// `None` until a request is sent.
    type State = Option<ConnectionState>;
    type Command = ConnectionCommand;
    type Facts = ConnectionFacts;
    type Event = ConnectionEvent;

    fn decide(
        state: &Self::State,
        command: ConnectionCommand,
        facts: &ConnectionFacts,
    ) -> Result<Vec<ConnectionEvent>, Rejection> {
        match command {
            ConnectionCommand::Send { request_id, from, to, status } => {
                decide_send(state.as_ref(), facts, request_id, from, to, status)
            }
            ConnectionCommand::Review { reviewer, status } => {
                decide_review(state.as_ref(), reviewer, status, facts.now)
            }
        }
    }

    fn apply(state: &mut Self::State, recorded: Recorded<'_, ConnectionEvent>) {
        *state = apply_to(state.take(), recorded.event, recorded.version);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionState {
    pub request_id: Uuid,
    pub from: Uuid,
    pub to: Uuid,
    pub status: RequestStatus,
    pub version: u64,
}

/// Requests a sender may send per UTC day; `None` is unlimited.
pub fn daily_limit(tier: Tier) -> Option<u32> {
    match tier {
        Tier::Free => Some(10),
        Tier::Silver => Some(100),
        Tier::Gold => None,
    }
}

/// Seconds until the next UTC midnight, when the daily count resets.
pub fn seconds_to_utc_midnight(now: DateTime<Utc>) -> u64 {
    let tomorrow = (now.date_naive() + Duration::days(1)).and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    tomorrow.map_or(86_400, |t| (t - now).num_seconds().max(1) as u64)
}

/// What a send is decided on beyond the pair's own state: whether the
/// recipient exists. The sender's daily limit is the sender's aggregate's
/// to decide (`UserCommand::ReserveRequestSlot`), before the request is
/// appended. A review needs only the time.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    pub recipient_exists: bool,
    pub now: DateTime<Utc>,
}

impl ConnectionFacts {
    /// For a review, which reads nothing about the users.
    pub fn at(now: DateTime<Utc>) -> Self {
        Self { recipient_exists: true, now }
    }
}

#[derive(Debug, Clone)]
pub enum ConnectionCommand {
    Send { request_id: Uuid, from: Uuid, to: Uuid, status: RequestStatus },
    Review { reviewer: Uuid, status: RequestStatus },
}

fn decide_send(
    existing: Option<&ConnectionState>,
    facts: &ConnectionFacts,
    request_id: Uuid,
    from: Uuid,
    to: Uuid,
    status: RequestStatus,
) -> Result<Vec<ConnectionEvent>, Rejection> {
    if !matches!(status, RequestStatus::Interested | RequestStatus::Ignored) {
        return Err(Rejection::invalid(ErrorCode::StatusInvalid, "a request is sent as interested or ignored"));
    }
    if from == to {
        return Err(Rejection::invalid(ErrorCode::CannotRequestSelf, "you cannot send a request to yourself"));
    }
    if !facts.recipient_exists {
        return Err(Rejection::NotFound { code: ErrorCode::UserNotFound, message: "no such user".into() });
    }
    if existing.is_some() {
        return Err(Rejection::Conflict {
            code: ErrorCode::RequestExists,
            message: "a request between you two already exists".into(),
        });
    }
    // Its slot of the daily limit is reserved on the sender's aggregate
    // before this is appended (`service::connection`).
    Ok(vec![ConnectionEvent::Requested(ConnectionRequested {
        request_id,
        from_user_id: from,
        to_user_id: to,
        status,
        slot_reserved: true,
    })])
}

fn decide_review(
    state: Option<&ConnectionState>,
    reviewer: Uuid,
    status: RequestStatus,
    now: DateTime<Utc>,
) -> Result<Vec<ConnectionEvent>, Rejection> {
    if !matches!(status, RequestStatus::Accepted | RequestStatus::Rejected) {
        return Err(Rejection::invalid(ErrorCode::StatusInvalid, "a request is reviewed as accepted or rejected"));
    }
    let state = state
        .ok_or_else(|| Rejection::NotFound { code: ErrorCode::RequestNotFound, message: "no such request".into() })?;
    if state.to != reviewer {
        return Err(Rejection::Forbidden {
            code: ErrorCode::NotRequestRecipient,
            message: "only the recipient can review a request".into(),
        });
    }
    if state.status != RequestStatus::Interested {
        return Err(Rejection::Conflict {
            code: ErrorCode::RequestNotPending,
            message: format!("only an interested request can be reviewed; this one is {}", state.status.as_str()),
        });
    }
    Ok(vec![ConnectionEvent::Reviewed(ConnectionReviewed { request_id: state.request_id, status, reviewed_at: now })])
}

fn apply_to(state: Option<ConnectionState>, event: &ConnectionEvent, version: u64) -> Option<ConnectionState> {
    match (state, event) {
        (None, ConnectionEvent::Requested(r)) => Some(ConnectionState {
            request_id: r.request_id,
            from: r.from_user_id,
            to: r.to_user_id,
            status: r.status,
            version,
        }),
        (Some(mut s), ConnectionEvent::Reviewed(r)) if s.request_id == r.request_id => {
            s.status = r.status;
            s.version = version;
            Some(s)
        }
        (state, _) => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::spec::given;

    fn facts() -> ConnectionFacts {
        ConnectionFacts { recipient_exists: true, now: Utc::now() }
    }

    fn send(from: Uuid, to: Uuid, status: RequestStatus) -> ConnectionCommand {
        ConnectionCommand::Send { request_id: Uuid::new_v4(), from, to, status }
    }

    fn review(reviewer: Uuid, status: RequestStatus) -> ConnectionCommand {
        ConnectionCommand::Review { reviewer, status }
    }

    /// The events of a sent request.
    fn requested(from: Uuid, to: Uuid, status: RequestStatus) -> Vec<ConnectionEvent> {
        given::<Connection>([]).when(send(from, to, status), &facts()).events().to_vec()
    }

    #[test]
    fn a_send_records_who_sent_what_to_whom() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let state = given::<Connection>(requested(a, b, RequestStatus::Interested)).state().expect("state");
        assert_eq!((state.from, state.to, state.status, state.version), (a, b, RequestStatus::Interested, 1));
    }

    #[test]
    fn sends_are_refused_by_rule() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut nothing_yet = given::<Connection>([]);
        assert_eq!(nothing_yet.when(send(a, a, RequestStatus::Interested), &facts()).code(), "cannot_request_self");
        assert_eq!(nothing_yet.when(send(a, b, RequestStatus::Accepted), &facts()).code(), "status_invalid");
        let nobody = ConnectionFacts { recipient_exists: false, ..facts() };
        assert_eq!(nothing_yet.when(send(a, b, RequestStatus::Interested), &nobody).code(), "user_not_found");
    }

    #[test]
    fn a_second_request_in_either_direction_is_a_conflict() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut pair = given::<Connection>(requested(a, b, RequestStatus::Ignored));
        assert_eq!(pair.when(send(a, b, RequestStatus::Interested), &facts()).code(), "request_exists");
        assert_eq!(pair.when(send(b, a, RequestStatus::Interested), &facts()).code(), "request_exists");
    }

    #[test]
    fn only_the_recipient_reviews_only_a_pending_interested_request() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut pending = given::<Connection>(requested(a, b, RequestStatus::Interested));
        assert_eq!(pending.when(review(a, RequestStatus::Accepted), &facts()).code(), "not_request_recipient");
        assert_eq!(pending.when(review(b, RequestStatus::Ignored), &facts()).code(), "status_invalid");
        let missing = given::<Connection>([]).when(review(b, RequestStatus::Accepted), &facts());
        assert_eq!(missing.code(), "request_not_found");
        let accepted = pending.when(review(b, RequestStatus::Accepted), &facts());
        assert_eq!(accepted.state.as_ref().map(|s| s.status), Some(RequestStatus::Accepted));
        assert_eq!(pending.when(review(b, RequestStatus::Rejected), &facts()).code(), "request_not_pending");
        let mut ignored = given::<Connection>(requested(a, b, RequestStatus::Ignored));
        assert_eq!(ignored.when(review(b, RequestStatus::Accepted), &facts()).code(), "request_not_pending");
    }

    #[test]
    fn midnight_is_counted_in_utc() {
        let late = DateTime::parse_from_rfc3339("2026-11-22T23:59:30Z").expect("time").with_timezone(&Utc);
        assert_eq!(seconds_to_utc_midnight(late), 30);
    }
}
