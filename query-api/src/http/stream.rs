//! `GET /v1/stream`: the caller's live updates as Server-Sent Events.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use platform::http::{ErrorCode, ErrorResponse};

use super::{ApiError, AppState, Caller};
use crate::streams::parse_stream_id;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/stream", get(stream))
}

/// How often an idle stream re-checks its session: with the revocation
/// poll, the longest an open stream outlives a logout.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// What an open stream re-checks before each event and while idle.
struct LiveSession {
    revocations: views::revocation::RevocationList,
    session_id: String,
    /// The token's `exp` (Unix seconds).
    expires_at: i64,
}

impl LiveSession {
    fn is_live(&self) -> bool {
        chrono::Utc::now().timestamp() < self.expires_at && !self.revocations.is_revoked(&self.session_id)
    }
}

#[utoipa::path(get, path = "/v1/stream", tag = "stream", security(("bearer" = [])),
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (while still in the cache)")),
    responses((status = 200, description = "text/event-stream of the caller's notifications, messages and presence changes; it ends within seconds of the session ending or the access token expiring (reconnect with a fresh token and Last-Event-ID)"),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 429, description = "`too_many_streams`: the user (or the server) has as many streams open as allowed", body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn stream(
    State(state): State<AppState>,
    Caller(claims): Caller,
    headers: axum::http::HeaderMap,
) -> Result<
    axum::response::sse::Sse<impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>>,
    ApiError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let resume = match headers.get("last-event-id").map(|v| v.to_str().unwrap_or_default().trim().to_owned()) {
        None => None,
        Some(id) => Some(parse_stream_id(&id).ok_or_else(|| ApiError::BadRequest {
            code: ErrorCode::LastEventIdInvalid,
            message: "Last-Event-ID is not an id this stream sent".into(),
        })?),
    };
    let key = state.keys.user_stream(&claims.sub.to_string());
    // Without Last-Event-ID: from now on, that is after the newest entry.
    let after = match resume {
        Some(after) => after,
        None => {
            let newest =
                state.views.reader().newest_stream_entry(&key).await.map_err(|_| ApiError::StreamUnavailable)?;
            parse_stream_id(&newest).unwrap_or((0, 0))
        }
    };
    let subscription = state.streams.open(key, after)?;
    // The stream ends within a liveness check (plus one revocation poll) of
    // its session being revoked, and when its token expires: it must not go
    // on delivering private messages to a logged-out client.
    let session = LiveSession {
        revocations: state.revocations.clone(),
        session_id: claims.jti.to_string(),
        expires_at: claims.exp,
    };
    let events = futures::stream::unfold((subscription, session), |(mut subscription, session)| async move {
        loop {
            if !session.is_live() {
                tracing::info!("the stream's session was revoked or expired; closing the stream");
                return None;
            }
            match tokio::time::timeout(LIVENESS_CHECK, subscription.entries.recv()).await {
                Err(_idle) => continue,
                // Dropped by the hub as too slow: the client resumes.
                Ok(None) => return None,
                Ok(Some(entry)) if session.is_live() => {
                    let event = Event::default().id(entry.id).event(entry.kind).data(entry.data);
                    return Some((Ok::<Event, std::convert::Infallible>(event), (subscription, session)));
                }
                Ok(Some(_)) => continue,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
