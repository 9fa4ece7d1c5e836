//! `GET /v1/connections` and `GET /v1/requests/received`: the lists paged
//! by cursor, newest first.

use std::collections::HashMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use platform::http::ApiQuery;
use platform::http::ErrorResponse;
use serde::Serialize;
use utoipa::ToSchema;
use views::UserDoc;

use super::paging::{ListParams, list_paging, page_of};
use super::profile::PublicProfile;
use super::{ApiError, AppState, Caller, Consistency};
use crate::cursor::{Cursor, List};
use crate::reader::ViewReader;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/connections", get(connections)).route("/v1/requests/received", get(requests_received))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    #[serde(flatten)]
    pub profile: PublicProfile,
    /// When the request between the two was accepted.
    pub connected_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPage {
    /// Newest connection first.
    pub items: Vec<Connection>,
    /// Pass as `before` for the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_before: Option<String>,
}

#[utoipa::path(get, path = "/v1/connections", tag = "connections", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = ConnectionPage),
        (status = 400, description = "`limit_invalid`, `limit_too_large` or `cursor_invalid`", body = ErrorResponse),
        (status = 401, body = ErrorResponse)))]
pub async fn connections(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    Consistency(freshness): Consistency,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ConnectionPage>, ApiError> {
    let (limit, before) = list_paging(&params, List::Connections)?;
    let found = reader.connections(&claims.sub.to_string(), before.as_ref(), limit, freshness).await?;
    let (connections, next_before) =
        page_of(found, limit, List::Connections, |c| Cursor { at: c.connected_at, id: c.request_id.clone() });
    let others: Vec<String> = connections.iter().map(|c| c.other_user_id.clone()).collect();
    let profiles: HashMap<String, UserDoc> =
        reader.users_by_id(&others).await?.into_iter().map(|u| (u.user_id.clone(), u)).collect();
    // A profile not projected yet is left out; the cursor still moves past it.
    let items = connections
        .into_iter()
        .filter_map(|c| {
            Some(Connection {
                profile: PublicProfile::from(profiles.get(&c.other_user_id)?),
                connected_at: c.connected_at,
            })
        })
        .collect();
    Ok(Json(ConnectionPage { items, next_before }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedRequest {
    pub request_id: String,
    pub from: PublicProfile,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedRequests {
    /// Newest request first.
    pub items: Vec<ReceivedRequest>,
    /// Pass as `before` for the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_before: Option<String>,
}

#[utoipa::path(get, path = "/v1/requests/received", tag = "connections", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = ReceivedRequests),
        (status = 400, description = "`limit_invalid`, `limit_too_large` or `cursor_invalid`", body = ErrorResponse),
        (status = 401, body = ErrorResponse)))]
pub async fn requests_received(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    _consistency: Consistency,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ReceivedRequests>, ApiError> {
    let (limit, before) = list_paging(&params, List::RequestsReceived)?;
    let found = reader.requests_received(&claims.sub.to_string(), before.as_ref(), limit).await?;
    let (requests, next_before) =
        page_of(found, limit, List::RequestsReceived, |r| Cursor { at: r.created_at, id: r.request_id.clone() });
    let senders: Vec<String> = requests.iter().map(|r| r.from_user_id.clone()).collect();
    let profiles: HashMap<String, UserDoc> =
        reader.users_by_id(&senders).await?.into_iter().map(|u| (u.user_id.clone(), u)).collect();
    let items = requests
        .into_iter()
        .filter_map(|r| {
            let from = PublicProfile::from(profiles.get(&r.from_user_id)?);
            Some(ReceivedRequest { request_id: r.request_id, from, created_at: r.created_at })
        })
        .collect();
    Ok(Json(ReceivedRequests { items, next_before }))
}
