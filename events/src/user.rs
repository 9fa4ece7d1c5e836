//! Events of the user aggregate, keyed by user id on [`crate::Topic::UserEvents`].
//!
//! Sessions belong to the user aggregate so that "changing the password
//! revokes every other session" is one command on one aggregate: one record,
//! one partition, atomic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The editable part of a user: everything but the email and the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub first_name: String,
    pub last_name: String,
    pub age: Option<u8>,
    pub gender: Option<Gender>,
    pub about: Option<String>,
    pub skills: Vec<String>,
    pub photo_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    Male,
    Female,
    Other,
}

impl Gender {
    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
            Gender::Other => "other",
        }
    }
}

/// `user.registered` v2. v1 had `skills` as one comma-separated string and
/// the email as typed; see [`crate::codec`] for the upcaster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRegistered {
    pub user_id: Uuid,
    /// Normalised (trimmed, lower-case); unique across users.
    pub email_id: String,
    #[serde(flatten)]
    pub profile: Profile,
}

/// `user.credentials_set` v1: the argon2id hash of the user's password.
///
/// The only secret in the log (docs/design.md §5). Only the command API's write
/// model reads it; the projector skips it, and `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSet {
    pub password_hash: String,
}

impl std::fmt::Debug for CredentialsSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsSet").field("password_hash", &"<redacted>").finish()
    }
}

/// `user.profile_updated` v1: the whole profile after the edit. Carrying the
/// full state (not a diff) makes the projection a plain versioned overwrite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileUpdated {
    #[serde(flatten)]
    pub profile: Profile,
}

/// `user.session_started` v1: a successful log-in. The session id is the
/// JWT's `jti`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStarted {
    pub session_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// `user.session_refreshed` v1: the session's refresh token was spent and
/// the one numbered `generation` issued in its place. Refresh tokens are
/// signed, not stored: the event holds the number only, so the log carries
/// no bearer secret, and a token numbered below the session's current one
/// is a spent token presented again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRefreshed {
    pub session_id: Uuid,
    pub generation: u32,
    /// The session's fixed end, repeated so the answer to a refresh is a
    /// function of this event alone (an idempotent retry rebuilds it).
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    Logout,
    PasswordChanged,
    /// A spent refresh token was presented again: someone holds a copy, so
    /// the whole session ends (OAuth 2.0 Security BCP, refresh rotation).
    RefreshTokenReused,
    /// The user started more sessions than the cap; the oldest ended.
    SessionLimit,
}

/// `user.sessions_revoked` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionsRevoked {
    pub session_ids: Vec<Uuid>,
    pub reason: RevocationReason,
}

/// Membership tiers (docs/domain.md "Membership").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    #[default]
    Free,
    Silver,
    Gold,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Silver => "silver",
            Tier::Gold => "gold",
        }
    }
}

/// `user.membership_changed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipChanged {
    pub tier: Tier,
}

/// `user.request_slot_reserved` v1: one of the sender's connection requests
/// for `day` (UTC), reserved by the owner of the sender's partition before
/// the owner of the pair's partition appends the request
/// (docs/scale-out.md §3). The daily limit is counted in these, at one
/// owner. It counts whether or not the request follows: a crash in between
/// costs the sender that slot for the day, and never lets them past the
/// limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestSlotReserved {
    pub request_id: Uuid,
    pub to_user_id: Uuid,
    pub day: chrono::NaiveDate,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserEvent {
    Registered(UserRegistered),
    CredentialsSet(CredentialsSet),
    ProfileUpdated(ProfileUpdated),
    SessionStarted(SessionStarted),
    SessionRefreshed(SessionRefreshed),
    SessionsRevoked(SessionsRevoked),
    MembershipChanged(MembershipChanged),
    RequestSlotReserved(RequestSlotReserved),
}

impl UserEvent {
    pub const REGISTERED: &'static str = "user.registered";
    pub const CREDENTIALS_SET: &'static str = "user.credentials_set";
    pub const PROFILE_UPDATED: &'static str = "user.profile_updated";
    pub const SESSION_STARTED: &'static str = "user.session_started";
    pub const SESSION_REFRESHED: &'static str = "user.session_refreshed";
    pub const SESSIONS_REVOKED: &'static str = "user.sessions_revoked";
    pub const MEMBERSHIP_CHANGED: &'static str = "user.membership_changed";
    pub const REQUEST_SLOT_RESERVED: &'static str = "user.request_slot_reserved";

    pub fn event_type(&self) -> &'static str {
        match self {
            UserEvent::Registered(_) => Self::REGISTERED,
            UserEvent::CredentialsSet(_) => Self::CREDENTIALS_SET,
            UserEvent::ProfileUpdated(_) => Self::PROFILE_UPDATED,
            UserEvent::SessionStarted(_) => Self::SESSION_STARTED,
            UserEvent::SessionRefreshed(_) => Self::SESSION_REFRESHED,
            UserEvent::SessionsRevoked(_) => Self::SESSIONS_REVOKED,
            UserEvent::MembershipChanged(_) => Self::MEMBERSHIP_CHANGED,
            UserEvent::RequestSlotReserved(_) => Self::REQUEST_SLOT_RESERVED,
        }
    }

    pub fn schema_version(&self) -> u32 {
        match self {
            UserEvent::Registered(_) => 2,
            _ => 1,
        }
    }
}
