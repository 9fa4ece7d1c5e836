//! The wire format of one Kafka record: a JSON array of envelopes, all of
//! one aggregate, in order. Old schema versions are upcast on decode.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::connection::ConnectionEvent;
use crate::message::MessageEvent;
use crate::notification::NotificationEvent;
use crate::presence::PresenceEvent;
use crate::user::UserEvent;
use crate::{Envelope, Event, EventMetadata};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record is not a JSON array of envelopes: {0}")]
    Malformed(String),
    #[error("record holds no events")]
    Empty,
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{event_type} has schema version {version}, newer than this program understands ({current})")]
    FutureVersion { event_type: String, version: u32, current: u32 },
    #[error("{event_type} v{version}: payload does not match its schema: {reason}")]
    BadPayload { event_type: String, version: u32, reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEnvelope {
    event_id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u32,
    aggregate_id: String,
    aggregate_version: u64,
    occurred_at: DateTime<Utc>,
    actor: Option<Uuid>,
    correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_fingerprint: Option<String>,
    data: Value,
}

/// Encodes the events of one command as one record value.
pub fn encode_record(envelopes: &[Envelope]) -> Vec<u8> {
    let wire: Vec<WireEnvelope> = envelopes.iter().map(to_wire).collect();
    // Serialising plain data structures to a Vec cannot fail.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Decodes one record value, upcasting old schema versions.
pub fn decode_record(bytes: &[u8]) -> Result<Vec<Envelope>, DecodeError> {
    let wire: Vec<WireEnvelope> = serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if wire.is_empty() {
        return Err(DecodeError::Empty);
    }
    wire.into_iter().map(from_wire).collect()
}

fn to_wire(env: &Envelope) -> WireEnvelope {
    let data = match &env.event {
        Event::User(e) => match e {
            UserEvent::Registered(p) => serde_json::to_value(p),
            UserEvent::CredentialsSet(p) => serde_json::to_value(p),
            UserEvent::ProfileUpdated(p) => serde_json::to_value(p),
            UserEvent::SessionStarted(p) => serde_json::to_value(p),
            UserEvent::SessionRefreshed(p) => serde_json::to_value(p),
            UserEvent::SessionsRevoked(p) => serde_json::to_value(p),
            UserEvent::MembershipChanged(p) => serde_json::to_value(p),
            UserEvent::RequestSlotReserved(p) => serde_json::to_value(p),
        },
        Event::Connection(e) => match e {
            ConnectionEvent::Requested(p) => serde_json::to_value(p),
            ConnectionEvent::Reviewed(p) => serde_json::to_value(p),
        },
        Event::Message(e) => match e {
            MessageEvent::Sent(p) => serde_json::to_value(p),
            MessageEvent::Delivered(p) => serde_json::to_value(p),
            MessageEvent::Read(p) => serde_json::to_value(p),
        },
        Event::Presence(PresenceEvent::Heartbeat(p) | PresenceEvent::Offline(p)) => serde_json::to_value(p),
        Event::Notification(NotificationEvent::Read(p)) => serde_json::to_value(p),
    }
    .unwrap_or(Value::Null);
    WireEnvelope {
        event_id: env.event_id,
        event_type: env.event_type().to_owned(),
        schema_version: env.event.schema_version(),
        aggregate_id: env.aggregate_id.clone(),
        aggregate_version: env.aggregate_version,
        occurred_at: env.occurred_at,
        actor: env.metadata.actor,
        correlation_id: env.metadata.correlation_id.clone(),
        idempotency_key: env.metadata.idempotency_key.clone(),
        request_fingerprint: env.metadata.request_fingerprint.clone(),
        data,
    }
}

fn from_wire(w: WireEnvelope) -> Result<Envelope, DecodeError> {
    let event = decode_payload(&w.event_type, w.schema_version, w.data)?;
    Ok(Envelope {
        event_id: w.event_id,
        aggregate_id: w.aggregate_id,
        aggregate_version: w.aggregate_version,
        occurred_at: w.occurred_at,
        metadata: EventMetadata {
            actor: w.actor,
            correlation_id: w.correlation_id,
            idempotency_key: w.idempotency_key,
            request_fingerprint: w.request_fingerprint,
        },
        event,
    })
}

fn decode_payload(event_type: &str, version: u32, data: Value) -> Result<Event, DecodeError> {
    fn parse<T: serde::de::DeserializeOwned>(event_type: &str, version: u32, data: Value) -> Result<T, DecodeError> {
        serde_json::from_value(data).map_err(|e| DecodeError::BadPayload {
            event_type: event_type.to_owned(),
            version,
            // serde may quote the offending value; for credentials that
            // would put a password hash into logs and dead letters.
            reason: if event_type == UserEvent::CREDENTIALS_SET {
                "payload redacted".to_owned()
            } else {
                e.to_string()
            },
        })
    }
    let current = match event_type {
        UserEvent::REGISTERED => 2,
        UserEvent::CREDENTIALS_SET
        | UserEvent::PROFILE_UPDATED
        | UserEvent::SESSION_STARTED
        | UserEvent::SESSION_REFRESHED
        | UserEvent::SESSIONS_REVOKED
        | UserEvent::MEMBERSHIP_CHANGED
        | UserEvent::REQUEST_SLOT_RESERVED
        | ConnectionEvent::REQUESTED
        | ConnectionEvent::REVIEWED
        | MessageEvent::SENT
        | MessageEvent::READ
        | MessageEvent::DELIVERED
        | PresenceEvent::HEARTBEAT
        | PresenceEvent::OFFLINE
        | NotificationEvent::READ => 1,
        other => return Err(DecodeError::UnknownType(other.to_owned())),
    };
    if version > current || version == 0 {
        return Err(DecodeError::FutureVersion { event_type: event_type.to_owned(), version, current });
    }
    let data = upcast(event_type, version, data).map_err(|reason| DecodeError::BadPayload {
        event_type: event_type.to_owned(),
        version,
        reason,
    })?;
    let (t, v) = (event_type, version);
    Ok(match event_type {
        UserEvent::REGISTERED => Event::User(UserEvent::Registered(parse(t, v, data)?)),
        UserEvent::CREDENTIALS_SET => Event::User(UserEvent::CredentialsSet(parse(t, v, data)?)),
        UserEvent::PROFILE_UPDATED => Event::User(UserEvent::ProfileUpdated(parse(t, v, data)?)),
        UserEvent::SESSION_STARTED => Event::User(UserEvent::SessionStarted(parse(t, v, data)?)),
        UserEvent::SESSION_REFRESHED => Event::User(UserEvent::SessionRefreshed(parse(t, v, data)?)),
        UserEvent::SESSIONS_REVOKED => Event::User(UserEvent::SessionsRevoked(parse(t, v, data)?)),
        UserEvent::MEMBERSHIP_CHANGED => Event::User(UserEvent::MembershipChanged(parse(t, v, data)?)),
        UserEvent::REQUEST_SLOT_RESERVED => Event::User(UserEvent::RequestSlotReserved(parse(t, v, data)?)),
        ConnectionEvent::REQUESTED => Event::Connection(ConnectionEvent::Requested(parse(t, v, data)?)),
        ConnectionEvent::REVIEWED => Event::Connection(ConnectionEvent::Reviewed(parse(t, v, data)?)),
        MessageEvent::SENT => Event::Message(MessageEvent::Sent(parse(t, v, data)?)),
        MessageEvent::READ => Event::Message(MessageEvent::Read(parse(t, v, data)?)),
        MessageEvent::DELIVERED => Event::Message(MessageEvent::Delivered(parse(t, v, data)?)),
        PresenceEvent::HEARTBEAT => Event::Presence(PresenceEvent::Heartbeat(parse(t, v, data)?)),
        PresenceEvent::OFFLINE => Event::Presence(PresenceEvent::Offline(parse(t, v, data)?)),
        _ => Event::Notification(NotificationEvent::Read(parse(t, v, data)?)),
    })
}

/// Brings an old payload up to the current schema. Each arm moves one
/// version forward; add an arm per new version and chain them.
fn upcast(event_type: &str, version: u32, data: Value) -> Result<Value, String> {
    match (event_type, version) {
        (UserEvent::REGISTERED, 1) => registered_v1_to_v2(data),
        _ => Ok(data),
    }
}

/// v1 kept the email as typed and the skills as one comma-separated string.
fn registered_v1_to_v2(mut data: Value) -> Result<Value, String> {
    let obj = data.as_object_mut().ok_or("payload is not an object")?;
    if let Some(Value::String(email)) = obj.get("emailId") {
        let normalised = email.trim().to_lowercase();
        obj.insert("emailId".into(), Value::String(normalised));
    }
    let skills = match obj.remove("skills") {
        Some(Value::String(joined)) => {
            joined.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_owned())).collect()
        }
        Some(Value::Null) | None => Vec::new(),
        Some(other) => return Err(format!("v1 skills must be a string, got {other}")),
    };
    obj.insert("skills".into(), Value::Array(skills));
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::{CredentialsSet, Gender, Profile, UserRegistered};

    fn envelope(event: UserEvent, version: u64) -> Envelope {
        Envelope {
            event_id: Uuid::new_v4(),
            aggregate_id: "u1".into(),
            aggregate_version: version,
            occurred_at: Utc::now(),
            metadata: EventMetadata {
                actor: None,
                correlation_id: "c1".into(),
                idempotency_key: Some("k1".into()),
                request_fingerprint: None,
            },
            event: Event::User(event),
        }
    }

    #[test]
    fn a_commit_round_trips() {
        let registered = UserEvent::Registered(UserRegistered {
            user_id: Uuid::new_v4(),
            email_id: "ada@example.com".into(),
            profile: Profile {
                first_name: "Ada".into(),
                last_name: "Lovelace".into(),
                age: Some(36),
                gender: Some(Gender::Female),
                about: None,
                skills: vec!["rust".into()],
                photo_url: None,
            },
        });
        let creds = UserEvent::CredentialsSet(CredentialsSet { password_hash: "$argon2id$x".into() });
        let commit = vec![envelope(registered, 1), envelope(creds, 2)];
        let decoded = decode_record(&encode_record(&commit)).expect("decodes");
        assert_eq!(decoded, commit);
    }

    #[test]
    fn the_password_hash_never_shows_in_debug_output() {
        let creds = CredentialsSet { password_hash: "$argon2id$secret".into() };
        assert!(!format!("{creds:?}").contains("secret"));
    }

    /// Bytes recorded from the first release, when `user.registered` was v1.
    #[test]
    fn recorded_v1_registration_is_upcast_to_the_current_shape() {
        let recorded = include_bytes!("../tests/fixtures/user.registered.v1.json");
        let decoded = decode_record(recorded).expect("v1 decodes");
        let Event::User(UserEvent::Registered(r)) = &decoded[0].event else {
            panic!("expected user.registered, got {:?}", decoded[0].event);
        };
        assert_eq!(r.email_id, "grace.hopper@example.com");
        assert_eq!(r.profile.skills, vec!["cobol", "compilers"]);
        assert_eq!(decoded[0].event.schema_version(), 2);
    }

    #[test]
    fn unknown_types_and_future_versions_are_errors_not_panics() {
        let unknown = br#"[{"eventId":"00000000-0000-0000-0000-000000000001","type":"user.teleported","schemaVersion":1,"aggregateId":"u","aggregateVersion":1,"occurredAt":"2026-01-01T00:00:00Z","actor":null,"correlationId":"c","data":{}}]"#;
        assert!(matches!(decode_record(unknown), Err(DecodeError::UnknownType(_))));
        let future = br#"[{"eventId":"00000000-0000-0000-0000-000000000001","type":"user.session_started","schemaVersion":9,"aggregateId":"u","aggregateVersion":1,"occurredAt":"2026-01-01T00:00:00Z","actor":null,"correlationId":"c","data":{}}]"#;
        assert!(matches!(decode_record(future), Err(DecodeError::FutureVersion { .. })));
        assert!(matches!(decode_record(b"[]"), Err(DecodeError::Empty)));
        assert!(matches!(decode_record(b"not json"), Err(DecodeError::Malformed(_))));
    }
}
