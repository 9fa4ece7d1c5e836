//! The user aggregate: profile, credentials and sessions.

use platform::error_code::ErrorCode;
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use events::user::{
    CredentialsSet, MembershipChanged, Profile, ProfileUpdated, RequestSlotReserved, RevocationReason,
    SessionRefreshed, SessionStarted, SessionsRevoked, Tier, UserEvent, UserRegistered,
};
use uuid::Uuid;

use super::validation::{self, ProfileInput};
use super::{Aggregate, Recorded, Rejection};

/// The user aggregate (keyed by user id on `user-events`).
#[derive(Debug)]
pub struct User;

/// What a user command is decided on beyond the user's own state.
#[derive(Debug, Clone)]
pub struct UserFacts {
    /// Who holds the email a sign-up asks for, if anyone.
    pub email_owner: Option<Uuid>,
    pub now: DateTime<Utc>,
}

impl Aggregate for User {
    /// `None` until the registration.
    type State = Option<UserState>;
    type Command = UserCommand;
    type Facts = UserFacts;
    type Event = UserEvent;

    fn decide(state: &Self::State, command: UserCommand, facts: &UserFacts) -> Result<Vec<UserEvent>, Rejection> {
        match (state, command) {
            (None, command @ UserCommand::Register { .. }) => decide_registration(facts.email_owner, command),
            (Some(_), UserCommand::Register { .. }) => {
                Err(Rejection::Conflict { code: ErrorCode::UserExists, message: "user already exists".into() })
            }
            // Anything but a sign-up needs the user: a token naming none is no session.
            (None, _) => Err(Rejection::SessionNotActive),
            (Some(state), command) => decide_existing(state, command, facts.now),
        }
    }

    fn apply(state: &mut Self::State, recorded: Recorded<'_, UserEvent>) {
        *state = apply_to(state.take(), recorded);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
    /// The generation of the one refresh token that may still be spent.
    pub refresh_generation: u32,
}

impl Session {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && self.expires_at > now
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserState {
    pub user_id: Uuid,
    pub email: String,
    pub profile: Profile,
    /// argon2id PHC string; `None` only between the two events of a sign-up.
    pub password_hash: Option<String>,
    pub sessions: HashMap<Uuid, Session>,
    pub tier: Tier,
    pub version: u64,
    /// UTC day → request slots reserved that day (today and yesterday kept):
    /// the daily request limit, counted at the owner of this user.
    #[serde(default)]
    pub request_slots: BTreeMap<NaiveDate, u32>,
}

impl UserState {
    pub fn slots_on(&self, day: NaiveDate) -> u32 {
        self.request_slots.get(&day).copied().unwrap_or(0)
    }
}

/// A field of a partial update: absent (unchanged), `null` (cleared) or a value.
pub type Patch<T> = Option<Option<T>>;

#[derive(Debug, Clone, Default)]
pub struct ProfilePatch {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub age: Patch<i64>,
    pub gender: Patch<String>,
    pub about: Patch<String>,
    pub skills: Patch<Vec<String>>,
    pub photo_url: Patch<String>,
}

impl ProfilePatch {
    fn is_empty(&self) -> bool {
        self.first_name.is_none()
            && self.last_name.is_none()
            && self.age.is_none()
            && self.gender.is_none()
            && self.about.is_none()
            && self.skills.is_none()
            && self.photo_url.is_none()
    }
}

#[derive(Debug, Clone)]
pub enum UserCommand {
    /// Sign-up. The email has been validated and normalised; the password
    /// hashed (hashing is slow and random, so it happens outside `decide`).
    Register {
        user_id: Uuid,
        email: String,
        profile: Profile,
        password_hash: String,
    },
    UpdateProfile {
        patch: ProfilePatch,
    },
    /// The current password has been verified by the caller.
    ChangePassword {
        new_password_hash: String,
        keep_session: Uuid,
    },
    /// A log-in. Past `max_active` active sessions the oldest end, so a
    /// user's sessions (and a password change's revocation event, which
    /// lists them) stay bounded.
    StartSession {
        session_id: Uuid,
        expires_at: DateTime<Utc>,
        max_active: usize,
    },
    /// Spend the refresh token of `generation`; its signature has been
    /// verified by the caller.
    RefreshSession {
        session_id: Uuid,
        generation: u32,
    },
    EndSession {
        session_id: Uuid,
    },
    ChangeMembership {
        tier: Tier,
    },
    /// One of the user's connection requests for today, before the pair's
    /// owner appends it (docs/scale-out.md §3). `unreserved_today`: requests
    /// of today that counted themselves (appended before reservations
    /// existed), which the write model counts apart.
    ReserveRequestSlot {
        request_id: Uuid,
        to: Uuid,
        unreserved_today: u32,
    },
}

/// Sign-up is decided against the email index (who owns this email), the
/// other commands against the user's own state.
fn decide_registration(email_owner: Option<Uuid>, command: UserCommand) -> Result<Vec<UserEvent>, Rejection> {
    let UserCommand::Register { user_id, email, profile, password_hash } = command else {
        unreachable!("only a registration is decided here");
    };
    if email_owner.is_some() {
        return Err(Rejection::Conflict {
            code: ErrorCode::EmailTaken,
            message: "an account with this email already exists".into(),
        });
    }
    Ok(vec![
        UserEvent::Registered(UserRegistered { user_id, email_id: email, profile }),
        UserEvent::CredentialsSet(CredentialsSet { password_hash }),
    ])
}

fn decide_existing(state: &UserState, command: UserCommand, now: DateTime<Utc>) -> Result<Vec<UserEvent>, Rejection> {
    match command {
        UserCommand::Register { .. } => unreachable!("a registration is decided apart"),
        UserCommand::UpdateProfile { patch } => {
            if patch.is_empty() {
                return Err(Rejection::invalid(ErrorCode::EmptyUpdate, "send at least one profile field to change"));
            }
            let current = &state.profile;
            let merged = ProfileInput {
                first_name: patch.first_name.unwrap_or_else(|| current.first_name.clone()),
                last_name: patch.last_name.unwrap_or_else(|| current.last_name.clone()),
                age: patch.age.unwrap_or(current.age.map(i64::from)),
                gender: patch.gender.unwrap_or_else(|| current.gender.map(|g| g.as_str().to_owned())),
                about: patch.about.unwrap_or_else(|| current.about.clone()),
                skills: Some(patch.skills.unwrap_or_else(|| Some(current.skills.clone())).unwrap_or_default()),
                photo_url: patch.photo_url.unwrap_or_else(|| current.photo_url.clone()),
            };
            let profile = validation::profile(&merged)?;
            Ok(vec![UserEvent::ProfileUpdated(ProfileUpdated { profile })])
        }
        UserCommand::ChangePassword { new_password_hash, keep_session } => {
            let mut others: Vec<Uuid> = state
                .sessions
                .iter()
                .filter(|(id, s)| **id != keep_session && s.is_active(now))
                .map(|(id, _)| *id)
                .collect();
            others.sort();
            let mut events = vec![UserEvent::CredentialsSet(CredentialsSet { password_hash: new_password_hash })];
            if !others.is_empty() {
                events.push(UserEvent::SessionsRevoked(SessionsRevoked {
                    session_ids: others,
                    reason: RevocationReason::PasswordChanged,
                }));
            }
            Ok(events)
        }
        UserCommand::StartSession { session_id, expires_at, max_active } => {
            let mut active: Vec<(&Uuid, &Session)> = state.sessions.iter().filter(|(_, s)| s.is_active(now)).collect();
            active.sort_by_key(|(id, s)| (s.started_at, **id));
            let excess = (active.len() + 1).saturating_sub(max_active.max(1));
            let mut events = Vec::new();
            if excess > 0 {
                events.push(UserEvent::SessionsRevoked(SessionsRevoked {
                    session_ids: active[..excess].iter().map(|(id, _)| **id).collect(),
                    reason: RevocationReason::SessionLimit,
                }));
            }
            events.push(UserEvent::SessionStarted(SessionStarted { session_id, expires_at }));
            Ok(events)
        }
        UserCommand::RefreshSession { session_id, generation } => {
            let session = state.sessions.get(&session_id).filter(|s| s.is_active(now));
            match session {
                Some(s) if generation == s.refresh_generation => {
                    Ok(vec![UserEvent::SessionRefreshed(SessionRefreshed {
                        session_id,
                        generation: generation + 1,
                        expires_at: s.expires_at,
                    })])
                }
                // A spent token: whoever presents it (the thief or the
                // victim, we cannot tell) ends the session for both.
                Some(s) if generation < s.refresh_generation => Ok(vec![UserEvent::SessionsRevoked(SessionsRevoked {
                    session_ids: vec![session_id],
                    reason: RevocationReason::RefreshTokenReused,
                })]),
                _ => Err(Rejection::SessionNotActive),
            }
        }
        UserCommand::EndSession { session_id } => match state.sessions.get(&session_id) {
            Some(s) if s.is_active(now) => Ok(vec![UserEvent::SessionsRevoked(SessionsRevoked {
                session_ids: vec![session_id],
                reason: RevocationReason::Logout,
            })]),
            _ => Err(Rejection::SessionNotActive),
        },
        UserCommand::ChangeMembership { tier } => Ok(vec![UserEvent::MembershipChanged(MembershipChanged { tier })]),
        UserCommand::ReserveRequestSlot { request_id, to, unreserved_today } => {
            let day = now.date_naive();
            let used = state.slots_on(day) + unreserved_today;
            if crate::domain::connection::daily_limit(state.tier).is_some_and(|limit| used >= limit) {
                return Err(Rejection::LimitReached {
                    code: ErrorCode::DailyLimitReached,
                    message: format!("the {} tier's daily request limit is reached", state.tier.as_str()),
                    retry_after_secs: crate::domain::connection::seconds_to_utc_midnight(now),
                });
            }
            Ok(vec![UserEvent::RequestSlotReserved(RequestSlotReserved { request_id, to_user_id: to, day })])
        }
    }
}

/// Folds one event into the state. A first event that is not a
/// registration leaves the state as it is.
fn apply_to(state: Option<UserState>, recorded: Recorded<'_, UserEvent>) -> Option<UserState> {
    let Recorded { event, version, occurred_at, .. } = recorded;
    let mut state = match (state, event) {
        (None, UserEvent::Registered(r)) => {
            return Some(UserState {
                user_id: r.user_id,
                email: r.email_id.clone(),
                profile: r.profile.clone(),
                password_hash: None,
                sessions: HashMap::new(),
                tier: Tier::Free,
                version,
                request_slots: BTreeMap::new(),
            });
        }
        (None, _) => return None,
        (Some(s), _) => s,
    };
    match event {
        UserEvent::Registered(_) => {}
        UserEvent::CredentialsSet(c) => state.password_hash = Some(c.password_hash.clone()),
        UserEvent::ProfileUpdated(p) => state.profile = p.profile.clone(),
        UserEvent::SessionStarted(s) => {
            // Forget sessions that had expired when this one started, so the
            // map does not grow with every log-in; event time keeps replay
            // deterministic.
            state.sessions.retain(|_, old| old.expires_at > occurred_at);
            let session =
                Session { started_at: occurred_at, expires_at: s.expires_at, revoked: false, refresh_generation: 0 };
            state.sessions.insert(s.session_id, session);
        }
        UserEvent::SessionRefreshed(r) => {
            if let Some(s) = state.sessions.get_mut(&r.session_id) {
                s.refresh_generation = r.generation;
            }
        }
        UserEvent::SessionsRevoked(r) => {
            for id in &r.session_ids {
                if let Some(s) = state.sessions.get_mut(id) {
                    s.revoked = true;
                }
            }
        }
        UserEvent::MembershipChanged(m) => state.tier = m.tier,
        UserEvent::RequestSlotReserved(r) => {
            *state.request_slots.entry(r.day).or_insert(0) += 1;
            // Only today's count decides; yesterday's stays for a request
            // decided just before midnight.
            if let Some(yesterday) = r.day.pred_opt() {
                state.request_slots.retain(|day, _| *day >= yesterday);
            }
        }
    }
    state.version = version;
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::spec::given;
    use chrono::Duration;

    fn profile() -> Profile {
        Profile {
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            age: Some(36),
            gender: None,
            about: None,
            skills: vec!["math".into()],
            photo_url: None,
        }
    }

    fn facts() -> UserFacts {
        UserFacts { email_owner: None, now: Utc::now() }
    }

    fn register(user_id: Uuid) -> UserCommand {
        UserCommand::Register {
            user_id,
            email: "ada@example.com".into(),
            profile: profile(),
            password_hash: "$h1".into(),
        }
    }

    fn registered(user_id: Uuid) -> Vec<UserEvent> {
        given::<User>([]).when(register(user_id), &facts()).events().to_vec()
    }

    fn started(session_id: Uuid, hours: i64) -> UserEvent {
        UserEvent::SessionStarted(SessionStarted { session_id, expires_at: Utc::now() + Duration::hours(hours) })
    }

    fn refresh(session_id: Uuid, generation: u32) -> UserCommand {
        UserCommand::RefreshSession { session_id, generation }
    }

    /// The state of a user known to exist.
    fn user(state: Option<UserState>) -> UserState {
        state.expect("the history starts with a registration")
    }

    #[test]
    fn registration_emits_the_profile_and_the_credentials_separately() {
        let id = Uuid::new_v4();
        let then = given::<User>([]).when(register(id), &facts());
        let events = then.events();
        assert!(matches!(&events[0], UserEvent::Registered(r) if r.user_id == id && r.email_id == "ada@example.com"));
        assert!(matches!(&events[1], UserEvent::CredentialsSet(c) if c.password_hash == "$h1"));
        let state = user(then.state);
        assert_eq!(state.password_hash.as_deref(), Some("$h1"));
        assert_eq!(state.version, 2);
    }

    fn reserve(unreserved_today: u32) -> UserCommand {
        UserCommand::ReserveRequestSlot { request_id: Uuid::now_v7(), to: Uuid::new_v4(), unreserved_today }
    }

    fn reserved_today(count: usize) -> Vec<UserEvent> {
        let day = Utc::now().date_naive();
        (0..count)
            .map(|_| {
                UserEvent::RequestSlotReserved(RequestSlotReserved {
                    request_id: Uuid::now_v7(),
                    to_user_id: Uuid::new_v4(),
                    day,
                })
            })
            .collect()
    }

    #[test]
    fn the_daily_limit_follows_the_tier_and_counts_reserved_and_older_requests() {
        let id = Uuid::new_v4();
        let free = |reserved: usize| [registered(id), reserved_today(reserved)].concat();
        let then = given::<User>(free(9)).when(reserve(0), &facts());
        assert!(matches!(&then.events()[0], UserEvent::RequestSlotReserved(r) if r.day == Utc::now().date_naive()));
        assert_eq!(user(then.state).slots_on(Utc::now().date_naive()), 10);
        let tenth = given::<User>(free(10)).when(reserve(0), &facts());
        assert!(
            matches!(&tenth.decided, Err(Rejection::LimitReached { retry_after_secs, .. }) if (1..=86_400).contains(retry_after_secs))
        );
        // Requests that counted themselves (before reservations) count too.
        assert_eq!(given::<User>(free(4)).when(reserve(6), &facts()).code(), "daily_limit_reached");
        assert!(given::<User>(free(4)).when(reserve(5), &facts()).decided.is_ok());
        let tier = |tier| UserEvent::MembershipChanged(MembershipChanged { tier });
        let silver = [registered(id), vec![tier(Tier::Silver)], reserved_today(99)].concat();
        assert!(given::<User>(silver.clone()).when(reserve(0), &facts()).decided.is_ok());
        assert_eq!(given::<User>(silver).when(reserve(1), &facts()).code(), "daily_limit_reached");
        let gold = [registered(id), vec![tier(Tier::Gold)]].concat();
        assert!(given::<User>(gold).when(reserve(100_000), &facts()).decided.is_ok());
    }

    #[test]
    fn slots_of_an_earlier_day_neither_count_nor_stay() {
        let id = Uuid::new_v4();
        let old = UserEvent::RequestSlotReserved(RequestSlotReserved {
            request_id: Uuid::now_v7(),
            to_user_id: Uuid::new_v4(),
            day: Utc::now().date_naive() - Duration::days(5),
        });
        let history = [registered(id), vec![old; 10], reserved_today(1)].concat();
        let then = given::<User>(history).when(reserve(0), &facts());
        assert!(then.decided.is_ok(), "ten slots five days ago do not count today");
        assert_eq!(user(then.state).request_slots.len(), 1, "only today's count is kept");
    }

    #[test]
    fn a_taken_email_is_a_conflict_and_a_user_registers_once() {
        let taken = UserFacts { email_owner: Some(Uuid::new_v4()), ..facts() };
        assert_eq!(given::<User>([]).when(register(Uuid::new_v4()), &taken).code(), "email_taken");
        let id = Uuid::new_v4();
        assert_eq!(given::<User>(registered(id)).when(register(id), &facts()).code(), "user_exists");
    }

    #[test]
    fn commands_for_a_user_that_does_not_exist_find_no_session() {
        let then = given::<User>([]).when(UserCommand::EndSession { session_id: Uuid::new_v4() }, &facts());
        assert_eq!(then.rejection(), &Rejection::SessionNotActive);
    }

    #[test]
    fn a_profile_patch_keeps_unsent_fields_and_clears_nulls() {
        let patch = ProfilePatch { first_name: Some("Augusta".into()), age: Some(None), ..Default::default() };
        let then = given::<User>(registered(Uuid::new_v4())).when(UserCommand::UpdateProfile { patch }, &facts());
        let UserEvent::ProfileUpdated(p) = &then.events()[0] else { panic!("expected ProfileUpdated") };
        assert_eq!(p.profile.first_name, "Augusta");
        assert_eq!(p.profile.last_name, "Lovelace");
        assert_eq!(p.profile.age, None);
        assert_eq!(p.profile.skills, vec!["math"]);
    }

    #[test]
    fn an_invalid_or_empty_patch_is_rejected() {
        let mut user = given::<User>(registered(Uuid::new_v4()));
        let empty = user.when(UserCommand::UpdateProfile { patch: ProfilePatch::default() }, &facts());
        assert_eq!(empty.code(), "empty_update");
        let patch = ProfilePatch { age: Some(Some(12)), ..Default::default() };
        assert_eq!(user.when(UserCommand::UpdateProfile { patch }, &facts()).code(), "age_below_minimum");
    }

    #[test]
    fn logout_revokes_only_an_active_session_once() {
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        let mut history = registered(Uuid::new_v4());
        history.push(started(s1, 8));
        let mut user_of = given::<User>(history);
        let then = user_of.when(UserCommand::EndSession { session_id: s1 }, &facts());
        assert!(user(then.state).sessions[&s1].revoked);
        let again = user_of.when(UserCommand::EndSession { session_id: s1 }, &facts());
        assert_eq!(again.rejection(), &Rejection::SessionNotActive);
        let unknown = user_of.when(UserCommand::EndSession { session_id: s2 }, &facts());
        assert_eq!(unknown.rejection(), &Rejection::SessionNotActive);
    }

    #[test]
    fn a_password_change_revokes_every_other_active_session() {
        let (mine, other, expired) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut history = registered(Uuid::new_v4());
        history.extend([started(mine, 8), started(other, 8), started(expired, -1)]);
        let change = UserCommand::ChangePassword { new_password_hash: "$h2".into(), keep_session: mine };
        let then = given::<User>(history).when(change, &facts());
        let events = then.events();
        assert!(matches!(&events[0], UserEvent::CredentialsSet(c) if c.password_hash == "$h2"));
        let UserEvent::SessionsRevoked(r) = &events[1] else { panic!("expected SessionsRevoked") };
        assert_eq!(r.session_ids, vec![other]);
        let state = user(then.state);
        assert!(state.sessions[&mine].is_active(Utc::now()));
        assert!(state.sessions[&other].revoked);
        assert_eq!(state.password_hash.as_deref(), Some("$h2"));
    }

    #[test]
    fn a_log_in_past_the_cap_ends_the_oldest_sessions() {
        let sessions: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let mut history = registered(Uuid::new_v4());
        history.extend(sessions.iter().map(|id| started(*id, 8)));
        history.push(started(Uuid::new_v4(), -1)); // expired: does not count
        let newest = Uuid::new_v4();
        let expires_at = Utc::now() + Duration::hours(8);
        let start = UserCommand::StartSession { session_id: newest, expires_at, max_active: 3 };
        let then = given::<User>(history).when(start, &facts());
        let events = then.events();
        let UserEvent::SessionsRevoked(r) = &events[0] else { panic!("expected SessionsRevoked first") };
        assert_eq!(r.session_ids, sessions[..2].to_vec(), "the two oldest end");
        assert_eq!(r.reason, RevocationReason::SessionLimit);
        assert!(matches!(&events[1], UserEvent::SessionStarted(s) if s.session_id == newest));
        let state = user(then.state);
        assert!(state.sessions[&sessions[2]].is_active(Utc::now()));
        assert_eq!(state.sessions.values().filter(|s| s.is_active(Utc::now())).count(), 3);
    }

    #[test]
    fn under_the_cap_a_log_in_ends_nothing() {
        let mut history = registered(Uuid::new_v4());
        history.push(started(Uuid::new_v4(), 8));
        let start = UserCommand::StartSession { session_id: Uuid::new_v4(), expires_at: Utc::now(), max_active: 2 };
        let then = given::<User>(history).when(start, &facts());
        assert!(matches!(then.events(), [UserEvent::SessionStarted(_)]));
    }

    #[test]
    fn a_refresh_token_is_spent_once_and_its_reuse_ends_the_session() {
        let session = Uuid::new_v4();
        let mut history = registered(Uuid::new_v4());
        history.push(started(session, 8));
        let mut user_of = given::<User>(history);
        let then = user_of.when(refresh(session, 0), &facts());
        assert!(
            matches!(&then.events()[0], UserEvent::SessionRefreshed(r) if r.generation == 1 && r.session_id == session)
        );
        assert_eq!(user(then.state).sessions[&session].refresh_generation, 1);
        user_of.when(refresh(session, 1), &facts()).events();

        let reused = user_of.when(refresh(session, 0), &facts());
        let UserEvent::SessionsRevoked(r) = &reused.events()[0] else { panic!("expected SessionsRevoked") };
        assert_eq!((r.session_ids.as_slice(), r.reason), ([session].as_slice(), RevocationReason::RefreshTokenReused));
        assert!(user(reused.state).sessions[&session].revoked);
        let after = user_of.when(refresh(session, 2), &facts());
        assert_eq!(after.rejection(), &Rejection::SessionNotActive, "the family is over");
    }

    #[test]
    fn a_refresh_needs_an_active_session_and_a_token_it_issued() {
        let (session, expired) = (Uuid::new_v4(), Uuid::new_v4());
        let mut history = registered(Uuid::new_v4());
        history.extend([started(session, 8), started(expired, -1)]);
        let mut user_of = given::<User>(history);
        for (command, why) in [
            (refresh(expired, 0), "expired"),
            (refresh(Uuid::new_v4(), 0), "unknown"),
            (refresh(session, 5), "never issued"),
        ] {
            assert_eq!(user_of.when(command, &facts()).rejection(), &Rejection::SessionNotActive, "{why}");
        }
        user_of.when(UserCommand::EndSession { session_id: session }, &facts()).events();
        let after = user_of.when(refresh(session, 0), &facts());
        assert_eq!(after.rejection(), &Rejection::SessionNotActive, "logged out");
    }

    #[test]
    fn events_before_a_registration_are_ignored() {
        assert_eq!(given::<User>([started(Uuid::new_v4(), 1)]).state(), None);
    }
}
