//! Which endpoint group each command-API route is rate-limited in. The
//! groups and their defaults are in `platform::rate_limit::catalog`;
//! `DEVCONNECT_RATE_LIMITS` overrides them.

use axum::http::Method;
use platform::rate_limit::Group;
pub use platform::rate_limit::catalog::COMMAND_API as GROUPS;
use platform::rate_limit::catalog::{ACCOUNT, AUTH, MESSAGES, NOTIFICATIONS, PRESENCE, REQUESTS, SIGNUP};

/// The group of a request; `None` for what is not limited (operations
/// endpoints, the API documents, unknown routes).
pub fn group_of(_method: &Method, path: &str) -> Option<&'static Group> {
    let rest = path.strip_prefix("/v1/")?;
    let group = match rest.split('/').next()? {
        "auth" if rest == "auth/signup" => &SIGNUP,
        "auth" if rest == "auth/logout" => &ACCOUNT,
        "auth" => &AUTH,
        "profile" | "membership" => &ACCOUNT,
        "requests" => &REQUESTS,
        "messages" => &MESSAGES,
        "presence" => &PRESENCE,
        "notifications" => &NOTIFICATIONS,
        _ => return None,
    };
    Some(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_route_has_a_group() {
        let cases = [
            ("/v1/auth/signup", Some("signup")),
            ("/v1/auth/login", Some("auth")),
            ("/v1/auth/refresh", Some("auth")),
            ("/v1/auth/logout", Some("account")),
            ("/v1/profile", Some("account")),
            ("/v1/profile/password", Some("account")),
            ("/v1/membership", Some("account")),
            ("/v1/requests/send/interested/x", Some("requests")),
            ("/v1/messages/x/read", Some("messages")),
            ("/v1/presence/heartbeat", Some("presence")),
            ("/v1/notifications/x/read", Some("notifications")),
            ("/healthz", None),
            ("/openapi.json", None),
            ("/v1/nothing", None),
        ];
        for (path, expected) in cases {
            assert_eq!(group_of(&Method::POST, path).map(|g| g.name), expected, "{path}");
        }
    }
}
