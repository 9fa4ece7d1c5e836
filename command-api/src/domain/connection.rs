//! The connection aggregate: one per pair of users (docs/domain.md "Connections").

use chrono::{DateTime, Duration, Utc};
use events::connection::{ConnectionEvent, ConnectionRequested, ConnectionReviewed, RequestStatus};
use events::user::Tier;
use uuid::Uuid;

use super::Rejection;

#[derive(Debug, Clone, PartialEq, Eq)]
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

/// What a send is decided on beyond the pair's own state: facts about the
/// two users that the write model holds.
#[derive(Debug, Clone)]
pub struct SendFacts {
    pub recipient_exists: bool,
    pub sender_tier: Tier,
    pub sent_today: u32,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum ConnectionCommand {
    Send { request_id: Uuid, from: Uuid, to: Uuid, status: RequestStatus },
    Review { reviewer: Uuid, status: RequestStatus, now: DateTime<Utc> },
}

pub fn decide_send(
    existing: Option<&ConnectionState>,
    facts: &SendFacts,
    command: ConnectionCommand,
) -> Result<Vec<ConnectionEvent>, Rejection> {
    let ConnectionCommand::Send { request_id, from, to, status } = command else {
        return Err(Rejection::invalid("unsupported_command", "not a send"));
    };
    if !matches!(status, RequestStatus::Interested | RequestStatus::Ignored) {
        return Err(Rejection::invalid("status_invalid", "a request is sent as interested or ignored"));
    }
    if from == to {
        return Err(Rejection::invalid("cannot_request_self", "you cannot send a request to yourself"));
    }
    if !facts.recipient_exists {
        return Err(Rejection::NotFound { code: "user_not_found", message: "no such user".into() });
    }
    if existing.is_some() {
        return Err(Rejection::Conflict {
            code: "request_exists",
            message: "a request between you two already exists".into(),
        });
    }
    if daily_limit(facts.sender_tier).is_some_and(|limit| facts.sent_today >= limit) {
        return Err(Rejection::LimitReached {
            code: "daily_limit_reached",
            message: format!("the {} tier's daily request limit is reached", facts.sender_tier.as_str()),
            retry_after_secs: seconds_to_utc_midnight(facts.now),
        });
    }
    Ok(vec![ConnectionEvent::Requested(ConnectionRequested { request_id, from_user_id: from, to_user_id: to, status })])
}

pub fn decide_review(
    state: Option<&ConnectionState>,
    command: ConnectionCommand,
) -> Result<Vec<ConnectionEvent>, Rejection> {
    let ConnectionCommand::Review { reviewer, status, now } = command else {
        return Err(Rejection::invalid("unsupported_command", "not a review"));
    };
    if !matches!(status, RequestStatus::Accepted | RequestStatus::Rejected) {
        return Err(Rejection::invalid("status_invalid", "a request is reviewed as accepted or rejected"));
    }
    let state =
        state.ok_or_else(|| Rejection::NotFound { code: "request_not_found", message: "no such request".into() })?;
    if state.to != reviewer {
        return Err(Rejection::Forbidden {
            code: "not_request_recipient",
            message: "only the recipient can review a request".into(),
        });
    }
    if state.status != RequestStatus::Interested {
        return Err(Rejection::Conflict {
            code: "request_not_pending",
            message: format!("only an interested request can be reviewed; this one is {}", state.status.as_str()),
        });
    }
    Ok(vec![ConnectionEvent::Reviewed(ConnectionReviewed { request_id: state.request_id, status, reviewed_at: now })])
}

pub fn apply(state: Option<ConnectionState>, event: &ConnectionEvent, version: u64) -> Option<ConnectionState> {
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

    fn facts() -> SendFacts {
        SendFacts { recipient_exists: true, sender_tier: Tier::Free, sent_today: 0, now: Utc::now() }
    }

    fn send(from: Uuid, to: Uuid, status: RequestStatus) -> ConnectionCommand {
        ConnectionCommand::Send { request_id: Uuid::new_v4(), from, to, status }
    }

    /// Given a sent request, folded.
    fn given_request(from: Uuid, to: Uuid, status: RequestStatus) -> ConnectionState {
        let events = decide_send(None, &facts(), send(from, to, status)).expect("sends");
        apply(None, &events[0], 1).expect("state")
    }

    fn code(result: Result<Vec<ConnectionEvent>, Rejection>) -> &'static str {
        match result {
            Err(
                Rejection::Invalid { code, .. }
                | Rejection::Conflict { code, .. }
                | Rejection::NotFound { code, .. }
                | Rejection::Forbidden { code, .. }
                | Rejection::LimitReached { code, .. },
            ) => code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_send_records_who_sent_what_to_whom() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let state = given_request(a, b, RequestStatus::Interested);
        assert_eq!((state.from, state.to, state.status, state.version), (a, b, RequestStatus::Interested, 1));
    }

    #[test]
    fn sends_are_refused_by_rule() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(code(decide_send(None, &facts(), send(a, a, RequestStatus::Interested))), "cannot_request_self");
        assert_eq!(code(decide_send(None, &facts(), send(a, b, RequestStatus::Accepted))), "status_invalid");
        let nobody = SendFacts { recipient_exists: false, ..facts() };
        assert_eq!(code(decide_send(None, &nobody, send(a, b, RequestStatus::Interested))), "user_not_found");
    }

    #[test]
    fn a_second_request_in_either_direction_is_a_conflict() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let existing = given_request(a, b, RequestStatus::Ignored);
        assert_eq!(
            code(decide_send(Some(&existing), &facts(), send(a, b, RequestStatus::Interested))),
            "request_exists"
        );
        assert_eq!(
            code(decide_send(Some(&existing), &facts(), send(b, a, RequestStatus::Interested))),
            "request_exists"
        );
    }

    #[test]
    fn the_daily_limit_follows_the_tier() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let at = |tier, sent_today| SendFacts { sender_tier: tier, sent_today, ..facts() };
        assert!(decide_send(None, &at(Tier::Free, 9), send(a, b, RequestStatus::Interested)).is_ok());
        let tenth = decide_send(None, &at(Tier::Free, 10), send(a, b, RequestStatus::Interested));
        assert!(
            matches!(&tenth, Err(Rejection::LimitReached { retry_after_secs, .. }) if (1..=86_400).contains(retry_after_secs))
        );
        assert!(decide_send(None, &at(Tier::Silver, 99), send(a, b, RequestStatus::Interested)).is_ok());
        assert_eq!(
            code(decide_send(None, &at(Tier::Silver, 100), send(a, b, RequestStatus::Interested))),
            "daily_limit_reached"
        );
        assert!(decide_send(None, &at(Tier::Gold, 100_000), send(a, b, RequestStatus::Interested)).is_ok());
    }

    #[test]
    fn only_the_recipient_reviews_only_a_pending_interested_request() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Utc::now();
        let review = |reviewer, status| ConnectionCommand::Review { reviewer, status, now };
        let pending = given_request(a, b, RequestStatus::Interested);
        assert_eq!(code(decide_review(Some(&pending), review(a, RequestStatus::Accepted))), "not_request_recipient");
        assert_eq!(code(decide_review(Some(&pending), review(b, RequestStatus::Ignored))), "status_invalid");
        assert_eq!(code(decide_review(None, review(b, RequestStatus::Accepted))), "request_not_found");
        let events = decide_review(Some(&pending), review(b, RequestStatus::Accepted)).expect("accepts");
        let accepted = apply(Some(pending), &events[0], 2).expect("state");
        assert_eq!(accepted.status, RequestStatus::Accepted);
        assert_eq!(code(decide_review(Some(&accepted), review(b, RequestStatus::Rejected))), "request_not_pending");
        let ignored = given_request(a, b, RequestStatus::Ignored);
        assert_eq!(code(decide_review(Some(&ignored), review(b, RequestStatus::Accepted))), "request_not_pending");
    }

    #[test]
    fn midnight_is_counted_in_utc() {
        let late = DateTime::parse_from_rfc3339("2026-11-22T23:59:30Z").expect("time").with_timezone(&Utc);
        assert_eq!(seconds_to_utc_midnight(late), 30);
    }
}
