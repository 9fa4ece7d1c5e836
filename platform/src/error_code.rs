//! The machine-readable `code` of every JSON error either API sends
//! (`{"error": {"code": …, "message": …}}`), as one enum: a code is named
//! once, here, and docs/api.md ("Error codes") lists each of them, which a
//! test checks.

use serde::{Serialize, Serializer};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal,)*) => {
        /// A JSON error's `code`; it serialises as its snake_case string.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of docs/api.md's table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }
        }
    };
}

error_codes! {
    // 400: the request itself.
    /// The body is not JSON.
    MalformedJson = "malformed_json",
    /// The JSON has a missing field or a wrong type.
    InvalidFieldType = "invalid_field_type",
    /// The body could not be read.
    UnreadableBody = "unreadable_body",
    /// The query string could not be read: a parameter repeated, or of the
    /// wrong type.
    QueryInvalid = "query_invalid",
    EmailInvalid = "email_invalid",
    PasswordWeak = "password_weak",
    FirstNameLength = "first_name_length",
    FirstNameInvalid = "first_name_invalid",
    LastNameLength = "last_name_length",
    LastNameInvalid = "last_name_invalid",
    AgeBelowMinimum = "age_below_minimum",
    AgeInvalid = "age_invalid",
    GenderInvalid = "gender_invalid",
    AboutTooLong = "about_too_long",
    SkillsTooMany = "skills_too_many",
    SkillEmpty = "skill_empty",
    SkillTooLong = "skill_too_long",
    PhotoUrlInvalid = "photo_url_invalid",
    EmptyUpdate = "empty_update",
    FieldNotEditable = "field_not_editable",
    CurrentPasswordIncorrect = "current_password_incorrect",
    StatusInvalid = "status_invalid",
    CannotRequestSelf = "cannot_request_self",
    TextEmpty = "text_empty",
    TextTooLong = "text_too_long",
    CannotMessageSelf = "cannot_message_self",
    TierInvalid = "tier_invalid",
    UserIdInvalid = "user_id_invalid",
    RequestIdInvalid = "request_id_invalid",
    MessageIdInvalid = "message_id_invalid",
    NotificationIdInvalid = "notification_id_invalid",
    IdempotencyKeyInvalid = "idempotency_key_invalid",
    /// An `X-Consistency-Token` the command API did not sign.
    ConsistencyTokenInvalid = "consistency_token_invalid",
    PageInvalid = "page_invalid",
    PageTooLarge = "page_too_large",
    LimitInvalid = "limit_invalid",
    LimitTooLarge = "limit_too_large",
    /// A history `before` that is not a message id.
    BeforeInvalid = "before_invalid",
    /// A list `before` that is not a `nextBefore` of that list.
    CursorInvalid = "cursor_invalid",
    UnreadInvalid = "unread_invalid",
    DateInvalid = "date_invalid",
    DateRangeInvalid = "date_range_invalid",
    DateRangeTooLong = "date_range_too_long",
    LastEventIdInvalid = "last_event_id_invalid",
    /// A guard in the command API that no HTTP request reaches.
    NothingToDo = "nothing_to_do",
    // 401
    /// No token, or one that is invalid, expired or ended.
    InvalidToken = "invalid_token",
    InvalidCredentials = "invalid_credentials",
    RefreshTokenReused = "refresh_token_reused",
    // 403
    NotRequestRecipient = "not_request_recipient",
    NotConnected = "not_connected",
    NotMessageRecipient = "not_message_recipient",
    NotYourNotification = "not_your_notification",
    // 404
    UserNotFound = "user_not_found",
    RequestNotFound = "request_not_found",
    MessageNotFound = "message_not_found",
    NotificationNotFound = "notification_not_found",
    RouteNotFound = "route_not_found",
    // 405
    MethodNotAllowed = "method_not_allowed",
    // 409
    EmailTaken = "email_taken",
    RequestExists = "request_exists",
    RequestNotPending = "request_not_pending",
    /// A guard in the command API that no HTTP request reaches.
    UserExists = "user_exists",
    // 413, 415, 422
    PayloadTooLarge = "payload_too_large",
    UnsupportedMediaType = "unsupported_media_type",
    IdempotencyKeyReused = "idempotency_key_reused",
    // 429
    TooManyAttempts = "too_many_attempts",
    DailyLimitReached = "daily_limit_reached",
    RateLimited = "rate_limited",
    TooManyStreams = "too_many_streams",
    // 500
    /// A bug: a panic, caught.
    InternalError = "internal_error",
    // 503: retry shortly, `Retry-After` says when.
    DependencyUnavailable = "dependency_unavailable",
    NotReady = "not_ready",
    HasherBusy = "hasher_busy",
    ConsistencyTimeout = "consistency_timeout",
    Overloaded = "overloaded",
    RequestTimeout = "request_timeout",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Not one of the codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an error code")]
pub struct UnknownErrorCode(pub String);

impl std::str::FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    /// The code of its wire string, for code that still names codes as
    /// strings (the command API's domain).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL.iter().copied().find(|code| code.as_str() == s).ok_or_else(|| UnknownErrorCode(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::ErrorCode;

    fn snake_case(name: &str) -> String {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }

    #[test]
    fn codes_are_unique_snake_case_and_serialise_as_themselves() {
        let mut seen = BTreeSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} appears twice");
            let words: Vec<&str> = s.split('_').collect();
            assert!(
                words.iter().all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())),
                "{s} is not snake_case"
            );
            assert_eq!(s, snake_case(&format!("{code:?}")), "the variant and its string name the same code");
            assert_eq!(serde_json::to_value(code).expect("json"), serde_json::Value::from(s));
            assert_eq!(code.to_string(), s);
            assert_eq!(s.parse::<ErrorCode>(), Ok(*code));
        }
        assert!("no_such_code".parse::<ErrorCode>().is_err());
    }

    /// The codes in the table of docs/api.md's "Error codes" section: the
    /// backquoted words of its second column.
    fn documented_codes(api_md: &str) -> Vec<String> {
        let section = api_md.split("### Error codes").nth(1).expect("docs/api.md has an \"Error codes\" section");
        let rows = section.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|'));
        let mut codes = Vec::new();
        for row in rows.skip(2) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let column = cells.get(2).unwrap_or_else(|| panic!("a row with a code column: {row}"));
            codes.extend(column.split('`').skip(1).step_by(2).map(str::to_owned));
        }
        codes
    }

    #[test]
    fn the_api_document_lists_every_code_and_no_other() {
        let documented = documented_codes(include_str!("../../docs/api.md"));
        let unique: BTreeSet<&str> = documented.iter().map(String::as_str).collect();
        assert_eq!(unique.len(), documented.len(), "a code listed twice: {documented:?}");
        let all: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let missing: Vec<&&str> = all.difference(&unique).collect();
        assert!(missing.is_empty(), "codes docs/api.md does not list: {missing:?}");
        let unknown: Vec<&&str> = unique.difference(&all).collect();
        assert!(unknown.is_empty(), "docs/api.md lists codes that are not ErrorCodes: {unknown:?}");
    }

    #[test]
    fn the_table_parser_reads_codes_from_every_row() {
        let md = "### Error codes\n\ntext\n\n| status | code | meaning |\n| --- | --- | --- |\n\
                  | 400 | `a_b` | x |\n| 404 | `c`, `d_e` | the `f` field |\n\nafter `g`\n";
        assert_eq!(documented_codes(md), ["a_b", "c", "d_e"]);
    }
}
