//! Thin axum handlers: extract, call the command service, shape the answer.
//! One module per resource; what they share (state, the caller, the write
//! extractors, the answer) is here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use blake2::{Blake2s256, Digest};
use field_rules::FieldRules;
use metrics_exporter_prometheus::PrometheusHandle;
use platform::auth::{Claims, JwtKeys, RefreshClaims, TOKEN_COOKIE};
use platform::http::{ApiJson, BearerAuth, CorrelationId, ErrorCode, ErrorResponse, ServiceRoutes, StandardResponses};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;
use views::{ConsistencyKey, ConsistencyToken};

use crate::error::ApiError;
use crate::service::{Answer, CommandContext, CommandError, CommandOutcome, CommandService};
use events::connection::RequestStatus;

mod auth;
mod connections;
mod field_rules;
pub mod forwarding;
mod internal;
mod messages;
mod notifications;
mod presence;
mod profile;

pub use auth::{LoginRequest, LoginResponse, RefreshRequest, SignupRequest};
pub use connections::{ReviewStatus, SendStatus};
pub use messages::MessageRequest;
pub use profile::{MembershipBody, PasswordChangeRequest, ProfilePatchRequest, TierName};

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<CommandService>,
    pub keys: Arc<JwtKeys>,
    pub metrics: PrometheusHandle,
    pub cookie_secure: bool,
    /// Signs `X-Consistency-Token`, so the query API can refuse forgeries.
    pub consistency: ConsistencyKey,
    pub rate_limit: platform::rate_limit::RateLimitState,
    pub in_flight: platform::http::InFlight,
    /// Where commands of partitions other instances own are forwarded.
    pub routes: Arc<crate::routing::Routes>,
}

impl FromRef<AppState> for Arc<CommandService> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.service)
    }
}

/// The verified claims of the caller's token. The session's state (active,
/// revoked) is checked by the service under the aggregate's lock.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let claims = platform::auth::request_claims(&mut parts.extensions, &parts.headers, &state.keys)
            .ok_or(CommandError::Unauthenticated)?;
        Ok(Caller(claims))
    }
}

/// A JSON integer as JSON Schema counts them: `70` and `70.0` alike (serde's
/// `i64` refuses the second, which a schema-following client may send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct JsonInteger(pub i64);

impl<'de> Deserialize<'de> for JsonInteger {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Beyond 2^53 a float no longer tells integers apart.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        let number = serde_json::Number::deserialize(deserializer)?;
        let integral = number.as_i64().or_else(|| {
            #[allow(clippy::cast_possible_truncation)] // integral and within ±2^53: exact
            number.as_f64().filter(|f| f.fract() == 0.0 && f.abs() <= EXACT).map(|f| f as i64)
        });
        integral.map(JsonInteger).ok_or_else(|| serde::de::Error::custom(format!("expected an integer, got {number}")))
    }
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Documents the `Idempotency-Key` header on every write, from the same
/// rule `idempotency_key` enforces: every write accepts it, not only the
/// few whose annotations used to list it.
#[derive(Debug)]
struct IdempotencyKeyHeader;

impl utoipa::Modify for IdempotencyKeyHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, Type};
        let header = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Retry-safe key: a retry of the same request (route, parameters, body and session) by the same \
                 user within 24 h returns the first answer and appends nothing; the key on another request is 422",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(format!("^[!-~]{{1,{MAX_IDEMPOTENCY_KEY_LEN}}}$"))),
            ))
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [item.post.as_mut(), item.put.as_mut(), item.patch.as_mut()].into_iter().flatten() {
                let parameters = operation.parameters.get_or_insert_with(Vec::new);
                if !parameters.iter().any(|p| p.name == "Idempotency-Key") {
                    parameters.push(header.clone());
                }
            }
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()));
    let key = key.ok_or_else(|| ApiError::BadRequest {
        code: ErrorCode::IdempotencyKeyInvalid,
        message: format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
    })?;
    Ok(Some(key.to_owned()))
}

/// A digest of what the request asks for, secrets left out (a password must
/// not be recoverable from the log by guessing against an unsalted digest):
/// the method and path (route and parameters), the caller's session (the
/// same key sent by another session is another request), and the body.
fn fingerprint(parts: &Parts, session: Option<Uuid>, mut body: serde_json::Value) -> String {
    if let Some(object) = body.as_object_mut() {
        for secret in ["password", "currentPassword", "newPassword"] {
            object.remove(secret);
        }
    }
    let session = session.map(|s| s.to_string()).unwrap_or_default();
    let digest = Blake2s256::digest(format!("{} {}\n{session}\n{body}", parts.method, parts.uri.path()).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The command's context from the request head; the fingerprint is set
/// only when there is a key to tell retries by.
fn command_context(parts: &mut Parts, state: &AppState, body: serde_json::Value) -> Result<CommandContext, ApiError> {
    let correlation =
        parts.extensions.get::<CorrelationId>().map_or_else(|| Uuid::new_v4().to_string(), |c| c.0.clone());
    let idempotency_key = idempotency_key(&parts.headers)?;
    let fingerprint = idempotency_key.is_some().then(|| {
        let session =
            platform::auth::request_claims(&mut parts.extensions, &parts.headers, &state.keys).map(|claims| claims.jti);
        fingerprint(parts, session, body)
    });
    Ok(CommandContext { correlation_id: correlation, idempotency_key, fingerprint })
}

/// A write with a JSON body: the command's context (correlation id,
/// `Idempotency-Key` and the fingerprint derived from the request, which no
/// handler spells out) and the body.
#[derive(Debug)]
pub struct Write<T>(pub CommandContext, pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for Write<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let mut head = Parts::clone(&parts);
        let ApiJson(value) =
            ApiJson::<serde_json::Value>::from_request(axum::extract::Request::from_parts(parts, body), state).await?;
        // Parsed from the value the fingerprint reads, so both see one body.
        let typed = serde_json::from_value(value.clone()).map_err(|e| ApiError::BadRequest {
            code: ErrorCode::InvalidFieldType,
            message: format!("Failed to deserialize the JSON body into the target type: {e}"),
        })?;
        Ok(Write(command_context(&mut head, state, value)?, typed))
    }
}

/// A write without a body: the command's context alone.
#[derive(Debug)]
pub struct WriteNoBody(pub CommandContext);

impl FromRequestParts<AppState> for WriteNoBody {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(WriteNoBody(command_context(parts, state, serde_json::Value::Null)?))
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserIdResponse {
    pub user_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestIdResponse {
    pub request_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageIdResponse {
    pub message_id: Uuid,
}

/// Turns an outcome into the HTTP answer, with the consistency token.
fn respond(state: &AppState, outcome: CommandOutcome) -> Response {
    let mut response = match outcome.answer {
        Answer::Registered { user_id } => (StatusCode::CREATED, Json(UserIdResponse { user_id })).into_response(),
        Answer::ProfileUpdated { user_id } => (StatusCode::OK, Json(UserIdResponse { user_id })).into_response(),
        Answer::NoContent => StatusCode::NO_CONTENT.into_response(),
        Answer::RequestSent { request_id } => {
            (StatusCode::CREATED, Json(RequestIdResponse { request_id })).into_response()
        }
        Answer::RequestReviewed { request_id } => {
            (StatusCode::OK, Json(RequestIdResponse { request_id })).into_response()
        }
        Answer::MessageSent { message_id } => {
            (StatusCode::CREATED, Json(MessageIdResponse { message_id })).into_response()
        }
        Answer::Membership { tier } => {
            (StatusCode::OK, Json(MembershipBody { tier: tier.as_str().to_owned() })).into_response()
        }
        Answer::LoggedIn { user_id, session_id, generation, issued_at, session_expires_at } => {
            auth::issue_tokens(state, user_id, session_id, generation, issued_at, session_expires_at)
        }
        Answer::RefreshTokenReused => ApiError::RefreshTokenReused.into_response(),
    };
    let headers = response.headers_mut();
    if let Some(position) = outcome.position {
        let token = ConsistencyToken { topic: position.topic, partition: position.partition, offset: position.offset };
        if let Ok(value) = HeaderValue::from_str(&token.encode(&state.consistency)) {
            headers.insert(ConsistencyToken::HEADER, value);
        }
    }
    if outcome.retried {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn parse_uuid(raw: &str, code: ErrorCode, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::BadRequest { code, message: format!("{what} must be a UUID") })
}

fn parse_status(raw: &str, allowed: &[RequestStatus]) -> Result<RequestStatus, ApiError> {
    allowed.iter().copied().find(|s| s.as_str() == raw).ok_or_else(|| ApiError::BadRequest {
        code: ErrorCode::StatusInvalid,
        message: format!(
            "status must be one of: {}",
            allowed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    })
}

async fn readyz(State(state): State<AppState>) -> Response {
    let service = Arc::clone(&state.service);
    let kafka = tokio::task::spawn_blocking(move || service.event_log().broker_reachable()).await.unwrap_or(false);
    let redis = state.service.redis_reachable().await;
    // Every partition has a live owner: this instance can take any command.
    let owners = state.service.every_partition_served().await;
    platform::http::readiness_response(&[
        ("writeModel", state.service.is_ready()),
        ("kafka", kafka),
        ("redis", redis),
        ("owners", owners),
    ])
}

async fn metrics(State(state): State<AppState>) -> Response {
    platform::http::metrics_response(&state.metrics)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "DevConnect command API", description = "Writes. Every success carries X-Consistency-Token."),
    paths(auth::signup, auth::login, auth::refresh, auth::logout, profile::update_profile, profile::change_password, connections::send_request, connections::review_request, profile::change_membership, messages::send_message, messages::read_message, messages::deliver_message, presence::heartbeat, presence::offline, notifications::read_notification),
    modifiers(&BearerAuth, &StandardResponses, &IdempotencyKeyHeader, &FieldRules)
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/auth/signup", post(auth::signup))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/refresh", post(auth::refresh))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/profile", patch(profile::update_profile))
        .route("/v1/profile/password", put(profile::change_password))
        .route("/v1/requests/send/{status}/{to_user_id}", post(connections::send_request))
        .route("/v1/requests/review/{status}/{request_id}", post(connections::review_request))
        .route("/v1/membership", put(profile::change_membership))
        .route("/v1/messages/{to_user_id}", post(messages::send_message))
        .route("/v1/messages/{message_id}/read", post(messages::read_message))
        .route("/v1/messages/{message_id}/delivered", post(messages::deliver_message))
        .route("/v1/presence/heartbeat", post(presence::heartbeat))
        .route("/v1/presence/offline", post(presence::offline))
        .route("/v1/notifications/{notification_id}/read", post(notifications::read_notification))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state.routes), forwarding::forward_to_owner))
        // Between instances; never forwarded again.
        .route(crate::routing::SLOTS_PATH, post(internal::reserve_slot));
    let forwarded = Arc::clone(&state.routes);
    let routes = ServiceRoutes {
        api,
        readyz: get(readyz),
        metrics: get(metrics),
        rate_limit: state.rate_limit.clone(),
        openapi: ApiDoc::openapi(),
        in_flight: state.in_flight.clone(),
    };
    routes.into_router(state).layer(axum::middleware::from_fn_with_state(forwarded, forwarding::accept_forwarded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_documents_the_idempotency_key_with_its_rule() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let mut writes = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("operations") {
                let params = operation["parameters"].as_array().cloned().unwrap_or_default();
                let key = params.iter().find(|p| p["name"] == "Idempotency-Key");
                if method == "get" {
                    assert!(key.is_none(), "{method} {path}");
                    continue;
                }
                writes += 1;
                let key = key.unwrap_or_else(|| panic!("{method} {path} lists no Idempotency-Key"));
                assert_eq!(
                    (key["in"].as_str(), key["schema"]["pattern"].as_str()),
                    (Some("header"), Some("^[!-~]{1,255}$"))
                );
            }
        }
        assert_eq!(writes, 15, "every write route");
    }

    #[test]
    fn requests_with_passwords_never_print_them() {
        let login = LoginRequest { email_id: "ada@example.com".into(), password: "Sup3r$ecret".into() };
        let change = PasswordChangeRequest { current_password: "Old$ecret1".into(), new_password: "N3w$ecret1".into() };
        let signup: SignupRequest = serde_json::from_value(serde_json::json!({
            "firstName": "Ada", "lastName": "Lovelace", "emailId": "ada@example.com", "password": "Sup3r$ecret"
        }))
        .expect("signup");
        for printed in [format!("{login:?}"), format!("{change:?}"), format!("{signup:?}")] {
            assert!(!printed.contains("ecret"), "{printed}");
            assert!(printed.contains(auth::REDACTED), "{printed}");
        }
        assert!(format!("{login:?}").contains("ada@example.com"), "the rest still prints");
    }
}
