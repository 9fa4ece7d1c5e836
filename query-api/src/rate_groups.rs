//! Which endpoint group each query-API route is rate-limited in. The
//! groups and their defaults are in `platform::rate_limit::catalog`;
//! `DEVCONNECT_RATE_LIMITS` overrides them.

use axum::http::Method;
use platform::rate_limit::Group;
pub use platform::rate_limit::catalog::QUERY_API as GROUPS;
use platform::rate_limit::catalog::{READS, STREAM};

/// The group of a request; `None` for the operations endpoints and docs.
pub fn group_of(_method: &Method, path: &str) -> Option<&'static Group> {
    match path.strip_prefix("/v1/")? {
        "stream" => Some(&STREAM),
        _ => Some(&READS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_streams_are_told_apart() {
        assert_eq!(group_of(&Method::GET, "/v1/stream").map(|g| g.name), Some("stream"));
        assert_eq!(group_of(&Method::GET, "/v1/feed").map(|g| g.name), Some("reads"));
        assert_eq!(group_of(&Method::GET, "/v1/users/x").map(|g| g.name), Some("reads"));
        assert_eq!(group_of(&Method::GET, "/readyz"), None);
        assert_eq!(group_of(&Method::GET, "/docs/"), None);
    }
}
