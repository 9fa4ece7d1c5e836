//! Any instance accepts any command (docs/scale-out.md §1). Two layers:
//!
//! * `accept_forwarded`, outermost: a request another instance forwarded
//!   carries the client's address under a signature (`routing::HopKey`).
//!   Verified, it becomes the request's client address, and the rate
//!   limiter does not count the request a second time. Anything else in
//!   that header is dropped, so a client cannot claim another address or
//!   skip the limits.
//! * `forward_to_owner`, around the API routes: keeps the request's body,
//!   lets the handler run, and when the service answers that another
//!   instance owns the command's partition (`OwnedElsewhere` on the
//!   response), sends the request there and returns that answer. A request
//!   that was forwarded already is never forwarded again.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use platform::http::{BODY_LIMIT_BYTES, CORRELATION_ID, CorrelationId, ErrorCode, error_response};

use crate::routing::{HOP_HEADER, Routes};

/// On an answer: the command belongs to the instance serving this partition.
#[derive(Debug, Clone, Copy)]
pub struct OwnedElsewhere(pub i32);

/// On a request that another instance forwarded, verified.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarded;

pub async fn accept_forwarded(State(routes): State<Arc<Routes>>, mut request: Request, next: Next) -> Response {
    if let Some(value) = request.headers_mut().remove(HOP_HEADER) {
        let now = chrono::Utc::now().timestamp().unsigned_abs();
        match value.to_str().ok().and_then(|v| routes.hop.verify(v, now)) {
            Some(client) => {
                let extensions = request.extensions_mut();
                extensions.insert(ConnectInfo(SocketAddr::new(client, 0)));
                extensions.insert(platform::rate_limit::CountedUpstream);
                extensions.insert(Forwarded);
            }
            None => {
                metrics::counter!("forwarded_header_rejected_total").increment(1);
                tracing::warn!("dropping an X-DevConnect-Forwarded header that does not verify");
            }
        }
    }
    next.run(request).await
}

pub async fn forward_to_owner(State(routes): State<Arc<Routes>>, request: Request, next: Next) -> Response {
    let forwarded = request.extensions().get::<Forwarded>().is_some();
    let client = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let correlation = request.extensions().get::<CorrelationId>().map(|c| c.0.clone());
    let (head, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT_BYTES).await {
        Ok(body) => body,
        Err(err) => return unreadable(&err),
    };
    let mut forward_head = head.clone();
    let response = next.run(Request::from_parts(head, axum::body::Body::from(body.clone()))).await;
    let Some(OwnedElsewhere(partition)) = response.extensions().get::<OwnedElsewhere>().copied() else {
        return response;
    };
    if forwarded {
        // The sender's table is stale; the client retries after Retry-After.
        metrics::counter!("forwarded_requests_refused_total").increment(1);
        return response;
    }
    let Some(owner) = routes.owner_of(partition).await else {
        tracing::warn!(partition, "no live owner in the routing table; asking the client to retry");
        return response;
    };
    if let Some(correlation) = correlation.and_then(|c| axum::http::HeaderValue::from_str(&c).ok()) {
        forward_head.headers.insert(CORRELATION_ID.clone(), correlation);
    }
    let client = client.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    match routes.forward(&owner, &forward_head, body, client).await {
        Ok(answer) => {
            metrics::counter!("forwarded_requests_total").increment(1);
            answer
        }
        Err(err) => {
            tracing::warn!(partition, owner, error = %err, "forwarding to the partition's owner failed");
            response
        }
    }
}

/// The body could not be read whole: over the limit, or the client stopped
/// sending (the body timeout).
fn unreadable(err: &axum::Error) -> Response {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if cause.to_string().contains("length limit exceeded") {
            let message = format!("request body is larger than {} KiB", BODY_LIMIT_BYTES / 1024);
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, &message, None);
        }
        source = cause.source();
    }
    error_response(StatusCode::BAD_REQUEST, ErrorCode::UnreadableBody, "the request body could not be read", None)
}
