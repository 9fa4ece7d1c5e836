//! Query parameters shared by the lists: whole numbers, limits, cursors.

use platform::http::ErrorCode;

use super::ApiError;
use crate::cursor::{Cursor, List};

/// A whole number of at least 1, or `default` when absent; else 400 `code`.
pub(super) fn positive(raw: Option<&str>, default: u64, code: ErrorCode, what: &str) -> Result<u64, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => s.trim().parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| ApiError::BadRequest {
            code,
            message: format!("{what} must be a whole number of at least 1"),
        }),
    }
}

/// Paging of the lists ordered by cursor: connections, requests received.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1-100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<String>,
    /// The `nextBefore` of the previous page: items after it. Opaque;
    /// omit it for the first page.
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    pub before: Option<String>,
}

const DEFAULT_LIST_LIMIT: u64 = 50;
const MAX_LIST_LIMIT: u64 = 100;

/// A checked `limit` of a list: 1-100, 50 when absent.
pub(super) fn list_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    let limit = positive(raw, DEFAULT_LIST_LIMIT, ErrorCode::LimitInvalid, "limit")?;
    if limit > MAX_LIST_LIMIT {
        return Err(ApiError::BadRequest {
            code: ErrorCode::LimitTooLarge,
            message: format!("limit must be at most {MAX_LIST_LIMIT}"),
        });
    }
    Ok(limit as usize)
}

/// A checked `limit` and `before` of `list`.
pub(super) fn list_paging(params: &ListParams, list: List) -> Result<(usize, Option<Cursor>), ApiError> {
    let limit = list_limit(params.limit.as_deref())?;
    let before = match params.before.as_deref() {
        None => None,
        Some(raw) => Some(Cursor::decode(raw.trim(), list).map_err(|_| ApiError::BadRequest {
            code: ErrorCode::CursorInvalid,
            message: "before must be a nextBefore this list returned".into(),
        })?),
    };
    Ok((limit, before))
}

/// A page out of at most `limit` + 1 documents, in order: the first
/// `limit`, and the cursor of the last of them when there were more.
pub(super) fn page_of<T>(
    mut found: Vec<T>,
    limit: usize,
    list: List,
    position: impl Fn(&T) -> Cursor,
) -> (Vec<T>, Option<String>) {
    if found.len() <= limit {
        return (found, None);
    }
    found.truncate(limit);
    let next = found.last().map(|last| position(last).encode(list));
    (found, next)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    fn params(limit: Option<&str>, before: Option<&str>) -> ListParams {
        ListParams { limit: limit.map(str::to_owned), before: before.map(str::to_owned) }
    }

    fn code(result: Result<(usize, Option<Cursor>), ApiError>) -> &'static str {
        match result {
            Err(ApiError::BadRequest { code, .. }) => code.as_str(),
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn list_paging_defaults_and_ranges() {
        let (limit, before) = list_paging(&params(None, None), List::Connections).expect("defaults");
        assert_eq!((limit, before), (50, None));
        assert_eq!(list_paging(&params(Some("1"), None), List::Connections).expect("1").0, 1);
        assert_eq!(list_paging(&params(Some("100"), None), List::Connections).expect("100").0, 100);
        for (limit, expected) in [
            ("0", "limit_invalid"),
            ("-1", "limit_invalid"),
            ("abc", "limit_invalid"),
            ("", "limit_invalid"),
            ("2.5", "limit_invalid"),
            ("101", "limit_too_large"),
            ("99999999999999999999999", "limit_invalid"),
        ] {
            assert_eq!(code(list_paging(&params(Some(limit), None), List::Connections)), expected, "{limit}");
        }
        let cursor = Cursor { at: Utc::now(), id: Uuid::now_v7().to_string() };
        let own = cursor.encode(List::RequestsReceived);
        let (_, before) = list_paging(&params(None, Some(&own)), List::RequestsReceived).expect("its own cursor");
        assert_eq!(before, Some(cursor));
        for before in ["garbage", "", &own] {
            assert_eq!(code(list_paging(&params(None, Some(before)), List::Connections)), "cursor_invalid", "{before}");
        }
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_more_was_found() {
        let at = Utc::now();
        let position = |n: &i64| Cursor { at: at + chrono::Duration::nanoseconds(*n), id: Uuid::nil().to_string() };
        let (items, next) = page_of(vec![5, 4, 3], 3, List::Connections, position);
        assert_eq!((items, next), (vec![5, 4, 3], None), "exactly a full last page");
        let (items, next) = page_of(vec![5, 4, 3, 2], 3, List::Connections, position);
        assert_eq!(items, vec![5, 4, 3]);
        let next = Cursor::decode(&next.expect("more"), List::Connections).expect("a cursor");
        assert_eq!(next, position(&3), "the position of the page's last item");
        assert_eq!(page_of(Vec::<i64>::new(), 3, List::Connections, position), (vec![], None));
    }
}
