//! List cursors: the `before` a client sends and the `nextBefore` a page
//! returns, for the lists ordered newest first by a time and then an id
//! (connections: `connectedAt`, `requestId`; requests received:
//! `createdAt`, `requestId`). A cursor is the position of the last item of
//! a page, not the item itself: it stays valid when that item leaves the
//! list (a request accepted meanwhile), and the next page is everything
//! strictly after it in the order.
//!
//! Opaque to clients: base64url (no padding) of `<list>|<time>|<id>`,
//! where `<list>` names the list it belongs to, `<time>` is RFC 3339 with
//! nine fraction digits (`views::documents::sortable_time`, as stored) and
//! `<id>` a UUID. Anything else, including another list's cursor, is
//! refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use views::documents::sortable_time;

/// The lists that page by cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Connections,
    RequestsReceived,
}

impl List {
    fn tag(self) -> &'static str {
        match self {
            List::Connections => "c",
            List::RequestsReceived => "r",
        }
    }
}

/// A position in a list: after the item at `at` with id `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    /// A UUID, lower-case and hyphenated, as the views store ids.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a cursor of this list")]
pub struct InvalidCursor;

/// Far longer than any cursor this service issues (about 90 characters).
const MAX_LENGTH: usize = 256;

impl Cursor {
    pub fn encode(&self, list: List) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}|{}", list.tag(), sortable_time::format(&self.at), self.id))
    }

    pub fn decode(raw: &str, list: List) -> Result<Self, InvalidCursor> {
        if raw.len() > MAX_LENGTH {
            return Err(InvalidCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| InvalidCursor)?;
        let text = String::from_utf8(bytes).map_err(|_| InvalidCursor)?;
        let mut parts = text.split('|');
        let (Some(tag), Some(at), Some(id), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(InvalidCursor);
        };
        if tag != list.tag() {
            return Err(InvalidCursor);
        }
        let at = DateTime::parse_from_rfc3339(at).map_err(|_| InvalidCursor)?.with_timezone(&Utc);
        let id = uuid::Uuid::parse_str(id).map_err(|_| InvalidCursor)?;
        Ok(Self { at, id: id.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        let at = DateTime::parse_from_rfc3339("2025-03-01T10:00:56.1002Z").expect("time").with_timezone(&Utc);
        Cursor { at, id: uuid::Uuid::now_v7().to_string() }
    }

    #[test]
    fn a_cursor_round_trips_exactly_and_is_url_safe() {
        let cursor = cursor();
        for list in [List::Connections, List::RequestsReceived] {
            let encoded = cursor.encode(list);
            assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{encoded}");
            assert!(encoded.len() < MAX_LENGTH);
            assert_eq!(Cursor::decode(&encoded, list), Ok(cursor.clone()));
        }
        // Nanoseconds survive.
        let precise = Cursor { at: cursor.at + chrono::Duration::nanoseconds(7), ..cursor.clone() };
        assert_eq!(Cursor::decode(&precise.encode(List::Connections), List::Connections), Ok(precise));
    }

    #[test]
    fn anything_but_a_cursor_of_the_same_list_is_refused() {
        let cursor = cursor();
        let id = &cursor.id;
        let raw = |text: &str| URL_SAFE_NO_PAD.encode(text);
        let refused = [
            String::new(),
            "garbage".to_owned(),
            "!!!!".to_owned(),
            "a".repeat(MAX_LENGTH + 1),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x00]),
            raw(&format!("c|2025-03-01T10:00:56Z|{id}|extra")),
            raw("c|2025-03-01T10:00:56Z"),
            raw(&format!("c|yesterday|{id}")),
            raw("c|2025-03-01T10:00:56Z|not-a-uuid"),
            raw(&format!("x|2025-03-01T10:00:56Z|{id}")),
            // Padded base64 is not what we issue.
            format!("{}=", cursor.encode(List::Connections)),
            // Another list's cursor.
            cursor.encode(List::RequestsReceived),
        ];
        for text in refused {
            assert_eq!(Cursor::decode(&text, List::Connections), Err(InvalidCursor), "{text:?}");
        }
        // Ids are normalised: an upper-case id names the same position.
        let upper = raw(&format!("c|2025-03-01T10:00:56.1002Z|{}", id.to_uppercase()));
        assert_eq!(Cursor::decode(&upper, List::Connections), Ok(cursor));
    }
}
