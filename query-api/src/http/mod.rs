//! Thin axum handlers over the view reader, one module per resource, each
//! with its own `router()`; this module merges them under the common
//! layers and describes them in one OpenAPI document. The extractors every
//! handler shares are `auth::Caller` (who is asking) and
//! `consistency::Consistency` (reading your own writes); `error::ApiError`
//! is every way a read can fail.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::Response;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use platform::auth::JwtKeys;
use platform::http::{BearerAuth, StandardResponses};
use utoipa::OpenApi;

use crate::reader::{ViewReader, ViewSource};
use crate::streams::StreamHub;

pub mod auth;
pub mod connections;
pub mod consistency;
pub mod error;
pub mod feed;
pub mod messages;
pub mod notifications;
mod paging;
pub mod presence;
pub mod profile;
pub mod stats;
pub mod stream;

pub use auth::Caller;
pub use consistency::Consistency;
pub use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub views: ViewSource,
    /// Revoked sessions, from the durable records the command API writes.
    pub revocations: views::revocation::RevocationList,
    /// The open live streams, read from Redis by one task.
    pub streams: StreamHub,
    pub keys: views::keys::RedisKeys,
    pub jwt: Arc<JwtKeys>,
    pub metrics: PrometheusHandle,
    pub consistency_wait: Duration,
    /// Checks that a consistency token is one the command API signed.
    pub consistency: views::ConsistencyKey,
    pub rate_limit: platform::rate_limit::RateLimitState,
    pub in_flight: platform::http::InFlight,
}

impl FromRef<AppState> for ViewReader {
    fn from_ref(state: &AppState) -> Self {
        state.views.reader()
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let reader = state.views.reader();
    let (mongo, redis) = (reader.mongo_reachable().await, reader.redis_reachable().await);
    let revocations = state.revocations.is_loaded();
    platform::http::readiness_response(&[("mongo", mongo), ("redis", redis), ("revocations", revocations)])
}

async fn metrics(State(state): State<AppState>) -> Response {
    platform::http::metrics_response(&state.metrics)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "DevConnect query API", description = "Reads, from Redis first and MongoDB second."),
    paths(
        profile::own_profile,
        profile::public_profile,
        feed::feed,
        connections::connections,
        connections::requests_received,
        messages::history,
        presence::presence,
        notifications::notifications,
        stats::daily_stats,
        stream::stream
    ),
    modifiers(&BearerAuth, &StandardResponses)
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(profile::router())
        .merge(feed::router())
        .merge(connections::router())
        .merge(messages::router())
        .merge(presence::router())
        .merge(notifications::router())
        .merge(stats::router())
        .merge(stream::router());
    let routes = platform::http::ServiceRoutes {
        api,
        readyz: get(readyz),
        metrics: get(metrics),
        rate_limit: state.rate_limit.clone(),
        openapi: ApiDoc::openapi(),
        in_flight: state.in_flight.clone(),
    };
    routes.into_router(state)
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use utoipa::OpenApi;

    #[test]
    fn the_api_document_describes_list_paging() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        for (path, schema) in [("/v1/connections", "ConnectionPage"), ("/v1/requests/received", "ReceivedRequests")] {
            let get = &doc["paths"][path]["get"];
            let params = get["parameters"].as_array().expect("parameters");
            let limit = params.iter().find(|p| p["name"] == "limit").expect("limit");
            assert_eq!(limit["in"], "query");
            assert_eq!((&limit["schema"]["minimum"], &limit["schema"]["maximum"]), (&1.into(), &100.into()), "{limit}");
            assert_eq!(limit["schema"]["default"], 50, "{limit}");
            assert!(params.iter().any(|p| p["name"] == "before" && p["in"] == "query"), "{params:?}");
            for status in ["200", "400", "401"] {
                assert!(get["responses"].get(status).is_some(), "{path} {status}");
            }
            let page = &doc["components"]["schemas"][schema];
            // Always present, null on the last page.
            assert_eq!(page["properties"]["nextBefore"]["type"], serde_json::json!(["string", "null"]), "{page}");
            assert!(page["required"].as_array().expect("required").contains(&"nextBefore".into()), "{page}");
        }
        let connection = doc["components"]["schemas"]["Connection"].to_string();
        assert!(connection.contains("connectedAt") && connection.contains("PublicProfile"), "{connection}");
    }
}
