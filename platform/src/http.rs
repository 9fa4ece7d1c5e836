//! HTTP plumbing shared by both APIs: the JSON error shape, a JSON extractor
//! whose rejections use that shape, correlation ids, request metrics,
//! `/healthz` and `/metrics`, and serving with graceful shutdown.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{FromRequest, MatchedPath, Request, State, rejection::JsonRejection};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tracing::Instrument;

pub use crate::error_code::ErrorCode;

/// Request bodies above this get 413 (docs/api.md).
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// The longest a request may take to produce its response: above the
/// longest consistency wait a read may ask for. A live stream's response
/// starts at once, so it is not cut by this.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest a client may take to send its body: a client trickling a
/// body byte by byte must not hold a task for ever.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

#[derive(Debug, Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    code: ErrorCode,
    message: &'a str,
}

/// `{"error": {"code": …, "message": …}}` with the given status, and a
/// `Retry-After` header when `retry_after_secs` is set.
pub fn error_response(status: StatusCode, code: ErrorCode, message: &str, retry_after_secs: Option<u64>) -> Response {
    let mut response = (status, Json(ErrorEnvelope { error: ErrorDetail { code, message } })).into_response();
    if let Some(secs) = retry_after_secs {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// A client-side problem with the request body, as status, code and message.
#[derive(Debug)]
pub struct BodyRejection {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message, None)
    }
}

impl From<JsonRejection> for BodyRejection {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match &rejection {
            JsonRejection::JsonDataError(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidFieldType),
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, ErrorCode::MalformedJson),
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorCode::UnsupportedMediaType)
            }
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            _ => (StatusCode::BAD_REQUEST, ErrorCode::UnreadableBody),
        };
        let message = match code {
            ErrorCode::PayloadTooLarge => format!("request body is larger than {} KiB", BODY_LIMIT_BYTES / 1024),
            _ => rejection.body_text(),
        };
        Self { status, code, message }
    }
}

/// `Json<T>` whose rejections are our JSON errors (400/413/415), never
/// axum's plain-text ones.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = BodyRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(req, state).await.map(|Json(v)| ApiJson(v)).map_err(BodyRejection::from)
    }
}

/// `Query<T>` whose rejection is our JSON error (400 `query_invalid`), never
/// axum's plain-text one.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Response> {
        axum::extract::Query::<T>::from_request_parts(parts, state).await.map(|q| ApiQuery(q.0)).map_err(|rejection| {
            error_response(StatusCode::BAD_REQUEST, ErrorCode::QueryInvalid, &rejection.body_text(), None)
        })
    }
}

/// The correlation id of the current request.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CorrelationId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<CorrelationId>()
            .cloned()
            .unwrap_or_else(|| CorrelationId(uuid::Uuid::new_v4().to_string())))
    }
}

fn acceptable_correlation_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| s.to_owned())
}

/// A request slower than this is logged at info level (others at debug).
const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes the client's `X-Correlation-Id` (or makes one), runs the request in
/// a span carrying it, echoes it on the response, and records metrics.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&CORRELATION_ID)
        .and_then(acceptable_correlation_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let span = tracing::info_span!("request", correlation_id = %id, %method, route = %route);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    // Every request is counted and timed in the metrics below. A log line
    // for each one cost the query API 15 % of its throughput (measured),
    // so only failures and slow requests are logged unless debugging.
    let latency_ms = elapsed.as_secs_f64() * 1e3;
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, latency_ms, "handled");
        } else if elapsed >= SLOW_REQUEST {
            tracing::info!(status, latency_ms, "handled slowly");
        } else {
            tracing::debug!(status, latency_ms, "handled");
        }
    });
    let labels = [("method", method), ("route", route), ("status", status.to_string())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels[..2]).record(elapsed.as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_ID.clone(), value);
    }
    response
}

/// Installs the process-wide Prometheus recorder (once per process).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])?
        .install_recorder()?;
    Ok(handle)
}

pub async fn healthz() -> StatusCode {
    StatusCode::NO_CONTENT
}

pub fn metrics_response(handle: &PrometheusHandle) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// `/readyz`: 200 `{"ready": true, ...}` or 503 naming what is not ready.
pub fn readiness_response(checks: &[(&str, bool)]) -> Response {
    let ready = checks.iter().all(|(_, ok)| *ok);
    let body: serde_json::Map<String, serde_json::Value> =
        checks.iter().map(|(name, ok)| ((*name).to_owned(), serde_json::Value::Bool(*ok))).collect();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "ready": ready, "checks": body }))).into_response()
}

async fn route_not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, ErrorCode::RouteNotFound, "no such route", None)
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
        None,
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    error_response(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::InternalError, "internal error", None)
}

/// Requests being handled at once; past it, a new one is answered 503
/// `overloaded` at once instead of queueing behind the others. A live
/// stream counts only until its response starts.
#[derive(Debug, Clone)]
pub struct InFlight(std::sync::Arc<tokio::sync::Semaphore>);

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(max.max(1))))
    }
}

/// Admits a request if there is room, and bounds the time to its response:
/// both answers are the JSON error with `Retry-After`.
async fn admit(State(in_flight): State<InFlight>, req: Request, next: Next) -> Response {
    let Ok(_permit) = in_flight.0.clone().try_acquire_owned() else {
        metrics::counter!("http_requests_shed_total").increment(1);
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "too many requests in flight",
            Some(1),
        );
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::RequestTimeout,
            "the request took too long to answer; nothing was half-written, retry shortly",
            Some(1),
        ),
    }
}

/// What every service serves besides its API, assembled in one order: the
/// operations endpoints beside the API, the rate limiter over both (it
/// passes whatever has no group), `/openapi.json` and `/docs`, then the
/// common layers (`with_common_layers`).
pub struct ServiceRoutes<S> {
    pub api: Router<S>,
    pub readyz: axum::routing::MethodRouter<S>,
    pub metrics: axum::routing::MethodRouter<S>,
    pub rate_limit: crate::rate_limit::RateLimitState,
    pub openapi: utoipa::openapi::OpenApi,
    pub in_flight: InFlight,
}

impl<S: Clone + Send + Sync + 'static> ServiceRoutes<S> {
    pub fn into_router(self, state: S) -> Router {
        let served = self
            .api
            .route("/healthz", axum::routing::get(healthz))
            .route("/readyz", self.readyz)
            .route("/metrics", self.metrics)
            .layer(axum::middleware::from_fn_with_state(self.rate_limit, crate::rate_limit::enforce))
            .with_state(state);
        let documented = served.merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", self.openapi));
        with_common_layers(documented, self.in_flight)
    }
}

/// Adds the layers every API has: JSON fallbacks, the body limit and the
/// body and request timeouts, the bound on requests in flight, panic
/// containment, correlation ids and metrics.
pub fn with_common_layers(router: Router, in_flight: InFlight) -> Router {
    router
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(axum::middleware::from_fn_with_state(in_flight, admit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(observe))
}

/// Serves until SIGINT/SIGTERM, with client addresses available to handlers.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(crate::shutdown_signal())
        .await?;
    Ok(())
}

/// The error body, for OpenAPI documents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorResponseDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorResponseDetail {
    /// Machine-readable, snake_case: e.g. `email_taken`, `password_weak`.
    pub code: String,
    pub message: String,
}

/// Lists, on every operation of an OpenAPI document, the error answers any
/// request may get, so the document names every status a client can see:
/// 400 for a malformed parameter or body; 401 where a token is needed;
/// 413 and 415 where there is a body; 422 for an `Idempotency-Key` reused
/// on a write; 429 for the rate limits; 503 for a dependency, overload or
/// timeout. What an operation documents itself is kept.
#[derive(Debug)]
pub struct StandardResponses;

impl utoipa::Modify for StandardResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{HttpMethod, RefOr, ResponseBuilder, content::ContentBuilder};
        let error = |description: &str| {
            let content =
                ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorResponse"))).build();
            RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Put, item.put.as_mut()),
                (HttpMethod::Patch, item.patch.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let mut standard = vec![
                    (
                        "400",
                        "A malformed parameter, header or body, or a field outside its rules; `code` names the rule",
                    ),
                    ("429", "A rate limit; see Retry-After"),
                    (
                        "503",
                        "A dependency unreachable, the service overloaded or not ready, or no answer within 30 s; see Retry-After. Nothing was half-written",
                    ),
                ];
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    standard.push(("401", "Missing, invalid, expired or revoked token"));
                }
                if operation.request_body.is_some() {
                    standard.push(("413", "The body is over 64 KiB"));
                    standard.push(("415", "The body is not declared as JSON"));
                }
                if method != HttpMethod::Get {
                    standard.push(("422", "This Idempotency-Key was used for a different request"));
                }
                for (status, description) in standard {
                    operation.responses.responses.entry(status.to_owned()).or_insert_with(|| error(description));
                }
            }
        }
    }
}

/// Declares the `bearer` (JWT) security scheme in an OpenAPI document.
#[derive(Debug)]
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}
