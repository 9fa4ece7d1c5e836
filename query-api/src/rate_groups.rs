//! Which endpoint group each query-API route is rate-limited in. The
//! groups and their defaults are in `platform::rate_limit::catalog`;
//! `DEVCONNECT_RATE_LIMITS` overrides them.

use axum::http::Method;
use platform::rate_limit::Group;
pub use platform::rate_limit::catalog::QUERY_API as GROUPS;
use platform::rate_limit::catalog::{READS, STREAM};

/// The group the rate-limit middleware counts a request in: the live
/// stream only. Every other read is counted by `Caller`
/// (`caller_group`), in the same Redis round trip as its session check.
pub fn group_of(_method: &Method, path: &str) -> Option<&'static Group> {
    match path.strip_prefix("/v1/")? {
        "stream" => Some(&STREAM),
        _ => None,
    }
}

/// The group `Caller` counts an authenticated request in (`None` where
/// the middleware counts it, or for the operations endpoints and docs).
pub fn caller_group(path: &str) -> Option<&'static Group> {
    match path.strip_prefix("/v1/")? {
        "stream" => None,
        _ => Some(&READS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_streams_are_told_apart() {
        assert_eq!(group_of(&Method::GET, "/v1/stream").map(|g| g.name), Some("stream"));
        assert_eq!(caller_group("/v1/stream"), None, "counted once, by the middleware");
        assert_eq!(group_of(&Method::GET, "/v1/feed"), None, "counted by Caller");
        assert_eq!(caller_group("/v1/feed").map(|g| g.name), Some("reads"));
        assert_eq!(caller_group("/v1/users/x").map(|g| g.name), Some("reads"));
        assert_eq!((group_of(&Method::GET, "/readyz"), caller_group("/readyz")), (None, None));
        assert_eq!((group_of(&Method::GET, "/docs/"), caller_group("/docs/")), (None, None));
    }
}
