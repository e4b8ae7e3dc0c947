//! The HTTP API: the only module that knows HTTP and JSON.
//!
//! axum on a loopback address. Every `/api/v1` route needs `Authorization: Bearer <token>`
//! (the token is in `<data dir>/api.json`, owner-only); a missing or wrong token gets 401.
//! Request bodies are limited to [`MAX_BODY`] bytes. `GET /` serves the web UI, which asks for
//! the token (or takes it from the URL fragment `#token=...`, which never reaches the server).
//!
//! Routes (JSON in and out): see `docs/API.md`.

use crate::config::{Config, DEFAULT_API};
use crate::error::NodeError;
use crate::handle::NodeHandle;
use crate::service::ServiceError as EngineError;
use agora_protocol::idea::{IdeaDraft, Status, Vote};
use agora_protocol::membership::Role;
use agora_protocol::{DocId, SpaceId};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use tokio::sync::watch;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

/// The web UI page.
const INDEX_HTML: &str = include_str!("../web/index.html");

/// An API error: a status and a one-line message that says what to do.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = match e {
            EngineError::UnknownSpace(_) | EngineError::UnknownIdea(_) => StatusCode::NOT_FOUND,
            EngineError::Schema(_) => StatusCode::BAD_REQUEST,
            EngineError::Membership(_) => StatusCode::FORBIDDEN,
            EngineError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let code = match e {
            NodeError::Network(crate::network::NetworkError::BadAddr { .. }) => {
                StatusCode::BAD_REQUEST
            }
            NodeError::Engine(e) => return e.into(),
            NodeError::Join(_) => StatusCode::FORBIDDEN,
            NodeError::BadTicket(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| bad_request(e.to_string()))
}

type ApiResult = Result<Response, ApiError>;

fn ok(value: impl serde::Serialize) -> ApiResult {
    Ok(Json(value).into_response())
}

async fn status(State(node): State<NodeHandle>) -> ApiResult {
    ok(node.status().await?)
}

async fn peers(State(node): State<NodeHandle>) -> ApiResult {
    ok(node.net_status().await?.peers)
}

#[derive(Deserialize)]
struct DialBody {
    addr: String,
}

async fn dial(State(node): State<NodeHandle>, Json(b): Json<DialBody>) -> ApiResult {
    node.dial(&b.addr).await?;
    ok(json!({ "dialing": b.addr }))
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

#[derive(Deserialize)]
struct CreateSpaceBody {
    name: String,
    /// An open space (version 1: anyone who learns its id can read and write it) instead of a
    /// private one.
    #[serde(default)]
    open: bool,
}

async fn create_space(State(node): State<NodeHandle>, Json(b): Json<CreateSpaceBody>) -> ApiResult {
    let id = if b.open {
        node.create_space(&b.name).await?
    } else {
        node.create_private_space(&b.name).await?
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": b.name.trim(), "private": !b.open })),
    )
        .into_response())
}

fn role(name: &str) -> Result<Role, ApiError> {
    match name {
        "reader" => Ok(Role::Reader),
        "member" => Ok(Role::Member),
        "admin" => Ok(Role::Admin),
        _ => Err(bad_request("role must be one of: reader, member, admin")),
    }
}

#[derive(Deserialize)]
struct InviteBody {
    #[serde(default)]
    role: Option<String>,
    /// Seconds the ticket stays valid (default 7 days).
    #[serde(default)]
    expires_in: Option<u64>,
    /// Admissions it allows (default 1).
    #[serde(default)]
    uses: Option<u64>,
}

/// Seven days.
pub const DEFAULT_TICKET_SECONDS: u64 = 7 * 24 * 3600;

async fn invite(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Json(b): Json<InviteBody>,
) -> ApiResult {
    let space: SpaceId = parse(&id)?;
    let role = role(b.role.as_deref().unwrap_or("member"))?;
    let uses = b.uses.unwrap_or(1);
    if uses == 0 || uses > 1000 {
        return Err(bad_request("uses must be between 1 and 1000"));
    }
    let expires_in = b.expires_in.unwrap_or(DEFAULT_TICKET_SECONDS);
    if expires_in == 0 || expires_in > 366 * 24 * 3600 {
        return Err(bad_request(
            "expires_in must be between 1 second and a year",
        ));
    }
    let ticket = node.invite(space, role, expires_in, uses).await?;
    Ok((StatusCode::CREATED, Json(json!({ "ticket": ticket }))).into_response())
}

#[derive(Deserialize)]
struct TicketBody {
    ticket: String,
}

async fn join_ticket(State(node): State<NodeHandle>, Json(b): Json<TicketBody>) -> ApiResult {
    let space = node.join_ticket(&b.ticket).await?;
    ok(json!({ "id": space, "joined": true }))
}

async fn revoke_ticket(State(node): State<NodeHandle>, Json(b): Json<TicketBody>) -> ApiResult {
    let space = node.revoke_ticket(&b.ticket).await?;
    ok(json!({ "id": space, "revoked": true }))
}

async fn members(State(node): State<NodeHandle>, Path(id): Path<String>) -> ApiResult {
    let members = node.members(parse(&id)?).await?;
    ok(members
        .into_iter()
        .map(|m| json!({ "author": m.author, "role": m.role.name(), "name": m.name }))
        .collect::<Vec<_>>())
}

async fn remove_member(
    State(node): State<NodeHandle>,
    Path((id, author)): Path<(String, String)>,
) -> ApiResult {
    node.remove_member(parse(&id)?, parse(&author)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct RoleBody {
    role: String,
}

async fn set_role(
    State(node): State<NodeHandle>,
    Path((id, author)): Path<(String, String)>,
    Json(b): Json<RoleBody>,
) -> ApiResult {
    node.set_role(parse(&id)?, parse(&author)?, role(&b.role)?)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rename_space(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Json(b): Json<NameBody>,
) -> ApiResult {
    node.rename_space(parse(&id)?, &b.name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn leave_space(State(node): State<NodeHandle>, Path(id): Path<String>) -> ApiResult {
    node.leave_space(parse(&id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_spaces(State(node): State<NodeHandle>) -> ApiResult {
    ok(node.spaces().await?)
}

async fn join_space(State(node): State<NodeHandle>, Path(id): Path<String>) -> ApiResult {
    let id: SpaceId = parse(&id)?;
    node.join_space(id).await?;
    ok(json!({ "id": id, "joined": true }))
}

async fn list_ideas(State(node): State<NodeHandle>, Path(id): Path<String>) -> ApiResult {
    ok(node.list_ideas(parse(&id)?).await?)
}

async fn create_idea(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Json(draft): Json<IdeaDraft>,
) -> ApiResult {
    let idea = node.create_idea(parse(&id)?, draft).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": idea }))).into_response())
}

async fn show_idea(State(node): State<NodeHandle>, Path(id): Path<String>) -> ApiResult {
    ok(node.show_idea(parse::<DocId>(&id)?).await?)
}

#[derive(Deserialize)]
struct CommentBody {
    text: String,
}

/// Whether the client asked for no representation in the answer (`Prefer: return=minimal`,
/// RFC 7240): then a write answers 204 once durable, without reading the idea back.
fn minimal(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("return=minimal"))
}

/// The answer to a write on an idea: the updated idea, or nothing if the client prefers.
async fn written(node: &NodeHandle, id: DocId, headers: &HeaderMap) -> ApiResult {
    if minimal(headers) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    ok(node.show_idea(id).await?)
}

async fn comment(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(b): Json<CommentBody>,
) -> ApiResult {
    let id: DocId = parse(&id)?;
    node.comment(id, &b.text).await?;
    written(&node, id, &headers).await
}

#[derive(Deserialize)]
struct VoteBody {
    vote: Vote,
}

async fn vote(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(b): Json<VoteBody>,
) -> ApiResult {
    let id: DocId = parse(&id)?;
    node.vote(id, b.vote).await?;
    written(&node, id, &headers).await
}

#[derive(Deserialize)]
struct StatusBody {
    status: Status,
}

async fn set_status(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(b): Json<StatusBody>,
) -> ApiResult {
    let id: DocId = parse(&id)?;
    node.set_status(id, b.status).await?;
    written(&node, id, &headers).await
}

async fn set_name(State(node): State<NodeHandle>, Json(b): Json<NameBody>) -> ApiResult {
    node.set_name(&b.name).await?;
    ok(json!({ "name": b.name.trim() }))
}

async fn events(State(node): State<NodeHandle>) -> impl IntoResponse {
    let rx = node.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let data = match rx.recv().await {
            Ok(ev) => serde_json::to_string(&ev).unwrap_or_default(),
            // A slow reader missed some events; tell it to refresh instead of failing.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                r#"{"type":"lagged"}"#.into()
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((
            Ok::<_, std::convert::Infallible>(Event::default().data(data)),
            rx,
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(node): State<NodeHandle>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    match given {
        Some(t) if same(t, node.api_token().as_bytes()) => next.run(req).await,
        _ => ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token: send `Authorization: Bearer <token>` with the token from <data dir>/api.json".into(),
        )
        .into_response(),
    }
}

/// The router, for embedding and tests.
pub fn router(node: NodeHandle) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/peers", get(peers).post(dial))
        .route("/profile", put(set_name))
        .route("/spaces", get(list_spaces).post(create_space))
        .route("/spaces/{id}/join", post(join_space))
        .route("/join", post(join_ticket))
        .route("/revoke", post(revoke_ticket))
        .route("/spaces/{id}/invites", post(invite))
        .route("/spaces/{id}/members", get(members))
        .route(
            "/spaces/{id}/members/{author}",
            delete(remove_member).put(set_role),
        )
        .route("/spaces/{id}/name", put(rename_space))
        .route("/spaces/{id}/leave", post(leave_space))
        .route("/spaces/{id}/ideas", get(list_ideas).post(create_idea))
        .route("/ideas/{id}", get(show_idea))
        .route("/ideas/{id}/comments", post(comment))
        .route("/ideas/{id}/votes", post(vote))
        .route("/ideas/{id}/status", post(set_status))
        .route("/events", get(events))
        .route_layer(middleware::from_fn_with_state(node.clone(), require_token));
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .nest("/api/v1", api)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}

/// Binds the API and serves it until `shutdown` turns true. Returns the bound address.
pub(crate) async fn serve(
    config: &Config,
    node: NodeHandle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), NodeError> {
    let addr = config.api_addr()?;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        // The default port is a convenience; if another node has it, take any free port.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && config.api == DEFAULT_API => {
            tracing::warn!(target: "agora::api", "{addr} is in use; using a free port instead");
            tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                .await
                .map_err(|source| NodeError::Io {
                    what: "cannot bind the API",
                    path: addr.to_string().into(),
                    source,
                })?
        }
        Err(source) => {
            return Err(NodeError::Io {
                what: "cannot bind the API (is another node using it? pass --api 127.0.0.1:0)",
                path: addr.to_string().into(),
                source,
            })
        }
    };
    let bound = listener.local_addr().map_err(|source| NodeError::Io {
        what: "cannot read the API address",
        path: addr.to_string().into(),
        source,
    })?;
    let app = router(node);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(target: "agora::api", %e, "API server failed");
        }
    });
    Ok((bound, task))
}
