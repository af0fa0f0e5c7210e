//! The admin API: inspecting and redriving each broker's dead-letter log. It listens on
//! its own address (`--admin-listen`, loopback by default), apart from the ingress that
//! producers reach. `triggerfish dlq` is its client. The work is done by
//! [`dispatcher::dead_letter`]; this is its HTTP face.
//!
//! - `GET  /admin/dlq/{ns}/{broker}?limit=N&from=OFFSET`: one page of entries, oldest
//!   pending first (`limit` 1 to 1000, default 100); `next` is where the next page
//!   starts. Undecodable entries are listed with their reason.
//! - `GET  /admin/dlq/{ns}/{broker}/{offset}`: one entry as a structured CloudEvent
//!   (422 with the reason and the stored bytes in base64 for an undecodable one).
//! - `POST /admin/dlq/{ns}/{broker}/redrive?to=subscriber|broker[&trigger=NAME][&batch=N][&concurrency=N]`:
//!   starts a redrive of every pending entry in the background and answers 202 with
//!   its status (409 while one runs, here or in another replica).
//! - `GET  /admin/dlq/{ns}/{broker}/redrive`: the running or last redrive's status and
//!   report (this replica's).
//! - `DELETE /admin/dlq/{ns}/{broker}/redrive`: cancels it.
//!
//! A redrive sends each entry to its trigger's subscriber with the trigger's retry
//! policy, or appends it to the broker again (where every trigger sees it), without
//! the `knativeerror*` and `triggerfish*` extensions. An entry that fails again goes
//! back to the end of the log with the new error; entries of other triggers move to
//! the end unchanged; the cursor is stored after every batch.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use broker::config::BrokerId;
use broker::event::json;
use broker::event::{ERROR_CODE, ERROR_DATA, ERROR_DEST, ERROR_TRIGGER, REASON};
use broker::telemetry::Metrics;
use dispatcher::dead_letter::{
    self, Listed, RedriveSpec, RedriveStatus, RedriveTo, Redrives, StartError, Target,
};
use dispatcher::BrokerLogs;
use serde::Deserialize;

use crate::reload::Reloader;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Where the ingress is, for the brokers' addresses in status.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// The ingress's (or, for a dispatcher-only process, the health endpoint's)
    /// listening address.
    pub ingress: std::net::SocketAddr,
    /// `--advertise-url`: the base URL producers use, when set.
    pub advertise: Option<String>,
    /// Whether the ingress speaks TLS (the address's scheme without
    /// `--advertise-url`).
    pub https: bool,
}

impl Addresses {
    /// The URL of a broker: `<base>/<namespace>/<name>`.
    pub fn broker_url(&self, id: &BrokerId) -> String {
        let base = match &self.advertise {
            Some(a) => a.trim_end_matches('/').to_owned(),
            None => {
                let mut a = self.ingress;
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let scheme = if self.https { "https" } else { "http" };
                format!("{scheme}://{a}")
            }
        };
        format!("{base}/{}/{}", id.namespace, id.name)
    }
}

/// Shared state of the admin API.
pub struct AdminState {
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) addresses: Addresses,
    redrives: Redrives,
}

impl AdminState {
    /// Builds the state. `owner` names this process in the dead-letter logs' redrive
    /// leases; redrives call subscribers with `trust`'s clients; `shutdown` cancels
    /// running redrives.
    pub fn new(
        reloader: Arc<Reloader>,
        addresses: Addresses,
        metrics: Arc<Metrics>,
        owner: &str,
        trust: Arc<dispatcher::trust::Trust>,
        shutdown: CancellationToken,
    ) -> AdminState {
        AdminState {
            reloader,
            addresses,
            redrives: Redrives::new(owner, metrics, shutdown).with_trust(trust),
        }
    }
}

/// The largest admin request body read.
const MAX_ADMIN_BODY: usize = 64 << 10;

/// The admin routes, every one behind `auth` ([`crate::admin_auth`]).
pub fn router(state: Arc<AdminState>, auth: Arc<crate::admin_auth::AdminAuth>) -> Router {
    Router::new()
        .route("/admin/dlq/{namespace}/{broker}", get(list))
        .route(
            "/admin/dlq/{namespace}/{broker}/redrive",
            get(redrive_status).post(redrive).delete(redrive_cancel),
        )
        .route("/admin/dlq/{namespace}/{broker}/{offset}", get(show))
        .route("/admin/v1/brokers", get(crate::status::brokers))
        .route("/admin/v1/triggers", get(crate::status::triggers))
        .route(
            "/admin/v1/reload",
            axum::routing::post(crate::status::reload),
        )
        // No admin request has a body worth more than this.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .with_state(state)
        // Outermost, so that unknown paths are refused the same way.
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::admin_auth::guard,
        ))
}

/// An admin request failure: a status and what went wrong.
pub(crate) struct AdminError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let AdminError(status, msg) = self;
        (
            status,
            Json(json!({"error": status.canonical_reason().unwrap_or(""), "detail": msg})),
        )
            .into_response()
    }
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> AdminError {
    AdminError(status, msg.into())
}

/// A query string that does not parse (a negative or too large number, say): 400
/// with serde's account of it, as JSON like every other admin error.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, AdminError> {
    q.map(|Query(q)| q)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))
}

fn internal(e: impl std::fmt::Display) -> AdminError {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn logs(state: &AdminState, ns: &str, name: &str) -> Result<BrokerLogs, AdminError> {
    state
        .reloader
        .live()
        .logs
        .get(&BrokerId::new(ns, name))
        .cloned()
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no broker {ns}/{name}")))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    from: Option<u64>,
}

fn listed_json(l: &Listed) -> serde_json::Value {
    match &l.entry {
        Ok(e) => json!({
            "offset": l.offset,
            "trigger": e.get_str(ERROR_TRIGGER),
            "id": e.id(),
            "source": e.source(),
            "type": e.ty(),
            "errordest": e.get_str(ERROR_DEST),
            "errorcode": e.get_str(ERROR_CODE),
            "errordata": e.get_str(ERROR_DATA),
            "reason": e.get_str(REASON),
        }),
        Err(m) => json!({"offset": l.offset, "undecodable": m.reason}),
    }
}

async fn list(
    State(state): State<Arc<AdminState>>,
    Path((ns, name)): Path<(String, String)>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, AdminError> {
    let q = query(q)?;
    let logs = logs(&state, &ns, &name)?;
    let page = dead_letter::page(logs.dead_letters.as_ref(), q.from, q.limit.unwrap_or(100))
        .await
        .map_err(|e| match e {
            dead_letter::ListError::Limit(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
            dead_letter::ListError::Channel(c) => internal(c),
        })?;
    let entries: Vec<_> = page.entries.iter().map(listed_json).collect();
    Ok(Json(json!({
        "broker": format!("{ns}/{name}"),
        "pending": page.end.saturating_sub(page.cursor),
        "cursor": page.cursor,
        "end": page.end,
        "next": page.next,
        "entries": entries,
    }))
    .into_response())
}

async fn show(
    State(state): State<Arc<AdminState>>,
    p: Result<Path<(String, String, u64)>, PathRejection>,
) -> Result<Response, AdminError> {
    let (ns, name, offset) = p
        .map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("the offset must be a whole number from 0 to {}", u64::MAX),
            )
        })?
        .0;
    let logs = logs(&state, &ns, &name)?;
    let found = dead_letter::entry_at(logs.dead_letters.as_ref(), offset)
        .await
        .map_err(internal)?;
    match found.map(|l| l.entry) {
        Some(Ok(e)) => Ok((
            [(http::header::CONTENT_TYPE, "application/cloudevents+json")],
            json::to_vec(&e),
        )
            .into_response()),
        Some(Err(m)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "Unprocessable Entity",
                "detail": format!("the entry at offset {offset} is not a CloudEvent: {}", m.reason),
                "offset": offset,
                "data_base64": m.data.as_ref().map(|d| base64::engine::general_purpose::STANDARD.encode(d)),
            })),
        )
            .into_response()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no dead-letter entry at offset {offset}"),
        )),
    }
}

#[derive(Deserialize)]
struct RedriveQuery {
    to: Option<String>,
    trigger: Option<String>,
    batch: Option<usize>,
    concurrency: Option<usize>,
}

/// A redrive's status as JSON (the CLI's progress and final report).
pub fn status_json(s: &RedriveStatus) -> serde_json::Value {
    let undecodable: Vec<_> = s
        .undecodable_entries
        .iter()
        .map(|(o, r)| json!({"offset": o, "reason": r}))
        .collect();
    json!({
        "id": s.id,
        "broker": s.broker.to_string(),
        "owner": s.owner,
        "state": s.state.as_str(),
        "error": s.error,
        "to": s.spec.to.as_str(),
        "trigger": s.spec.trigger,
        "batch": s.spec.batch,
        "concurrency": s.spec.concurrency,
        "from": s.from,
        "end": s.end,
        "position": s.position,
        "total": s.total(),
        "passed": s.passed(),
        "sent": s.sent,
        "failed_again": s.failed_again,
        "skipped": {
            "other_trigger": s.other_trigger,
            "trigger_gone": s.trigger_gone,
            "undecodable": s.undecodable,
        },
        "undecodable": undecodable,
        "batches": s.batches,
        "pending": s.pending,
        "started": s.started.to_string(),
        "finished": s.finished.map(|t| t.to_string()),
    })
}

async fn redrive(
    State(state): State<Arc<AdminState>>,
    Path((ns, name)): Path<(String, String)>,
    q: Result<Query<RedriveQuery>, QueryRejection>,
) -> Result<Response, AdminError> {
    let q = query(q)?;
    let to = match q.to.as_deref() {
        None | Some("subscriber") => RedriveTo::Subscriber,
        Some("broker") => RedriveTo::Broker,
        Some(other) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("to={other}: use subscriber or broker"),
            ))
        }
    };
    let logs = logs(&state, &ns, &name)?;
    let live = state.reloader.live();
    let Some(config) = live.config.broker(&ns, &name) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no broker {ns}/{name}"),
        ));
    };
    let defaults = RedriveSpec::default();
    let spec = RedriveSpec {
        to,
        trigger: q.trigger,
        batch: q.batch.unwrap_or(defaults.batch),
        concurrency: q.concurrency.unwrap_or(defaults.concurrency),
    };
    let target = Target {
        config: config.clone(),
        events: logs.events.clone(),
        dead_letters: logs.dead_letters.clone(),
    };
    match state.redrives.start(target, spec).await {
        Ok(status) => Ok((StatusCode::ACCEPTED, Json(status_json(&status))).into_response()),
        Err(e @ StartError::Invalid(_)) => Err(error(StatusCode::BAD_REQUEST, e.to_string())),
        Err(StartError::Running(running)) => Ok((
            StatusCode::CONFLICT,
            Json(json!({
                "error": "Conflict",
                "detail": StartError::Running(running.clone()).to_string(),
                "running": status_json(&running),
            })),
        )
            .into_response()),
        Err(e @ StartError::Elsewhere(_)) => Err(error(StatusCode::CONFLICT, e.to_string())),
        Err(StartError::Channel(e)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn redrive_status(
    State(state): State<Arc<AdminState>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, AdminError> {
    logs(&state, &ns, &name)?;
    match state.redrives.status(&BrokerId::new(&ns, &name)) {
        Some(s) => Ok(Json(status_json(&s)).into_response()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no redrive of broker {ns}/{name} has run in this process"),
        )),
    }
}

async fn redrive_cancel(
    State(state): State<Arc<AdminState>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, AdminError> {
    logs(&state, &ns, &name)?;
    match state.redrives.cancel(&BrokerId::new(&ns, &name)) {
        Some(s) => Ok((StatusCode::ACCEPTED, Json(status_json(&s))).into_response()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no redrive of broker {ns}/{name} is running in this process"),
        )),
    }
}
