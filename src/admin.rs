//! The admin API: inspecting and redriving each broker's dead-letter log. It listens on
//! its own address (`--admin-listen`, loopback by default), apart from the ingress that
//! producers reach. `triggerfish dlq` is its client.
//!
//! - `GET  /admin/dlq/{ns}/{broker}?limit=N`: entries not yet redriven, oldest first.
//! - `GET  /admin/dlq/{ns}/{broker}/{offset}`: one entry as a structured CloudEvent.
//! - `POST /admin/dlq/{ns}/{broker}/redrive?to=subscriber|broker[&trigger=NAME]`:
//!   re-sends every pending entry (of one trigger, with `trigger`) to its trigger's
//!   subscriber, with the trigger's retry policy, or appends it to the broker again
//!   (where every trigger sees it). The `knativeerror*` and `triggerfishtrigger`
//!   extensions are removed first. An entry that fails again goes back to the end of
//!   the log with the new error; entries of other triggers move to the end unchanged.
//!   Then the redrive cursor passes everything that was pending.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use broker::channel::{BrokerLog, StartAt};
use broker::config::{BrokerId, Config};
use broker::event::{json, Event};
use broker::event::{ERROR_CODE, ERROR_DATA, ERROR_DEST, ERROR_TRIGGER};
use broker::telemetry::Metrics;
use dispatcher::{BrokerLogs, REDRIVE_CURSOR};
use serde::Deserialize;
use serde_json::json;

/// Shared state of the admin API.
pub struct AdminState {
    config: Config,
    logs: HashMap<BrokerId, BrokerLogs>,
    client: dispatcher::deliver::HttpClient,
    metrics: Arc<Metrics>,
    redrive: tokio::sync::Mutex<()>,
}

impl AdminState {
    /// Builds the state.
    pub fn new(
        config: Config,
        logs: HashMap<BrokerId, BrokerLogs>,
        metrics: Arc<Metrics>,
    ) -> AdminState {
        AdminState {
            config,
            logs,
            client: dispatcher::deliver::client(),
            metrics,
            redrive: tokio::sync::Mutex::new(()),
        }
    }
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin/dlq/{namespace}/{broker}", get(list))
        .route("/admin/dlq/{namespace}/{broker}/redrive", post(redrive))
        .route("/admin/dlq/{namespace}/{broker}/{offset}", get(show))
        .with_state(state)
}

/// An admin request failure: a status and what went wrong.
struct AdminError(StatusCode, String);

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

fn error(status: StatusCode, msg: impl Into<String>) -> AdminError {
    AdminError(status, msg.into())
}

fn logs<'a>(state: &'a AdminState, ns: &str, name: &str) -> Result<&'a BrokerLogs, AdminError> {
    state
        .logs
        .get(&BrokerId::new(ns, name))
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no broker {ns}/{name}")))
}

async fn cursor(log: &dyn BrokerLog) -> Result<u64, AdminError> {
    dispatcher::redrive_cursor(log)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Reads entries `[from, end)`.
async fn read_range(
    log: &dyn BrokerLog,
    from: u64,
    end: u64,
    limit: usize,
) -> Result<Vec<(u64, Event)>, AdminError> {
    let internal =
        |e: broker::channel::ChannelError| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut reader = log
        .reader(0, StartAt::Offset(from))
        .await
        .map_err(internal)?;
    let mut out = Vec::new();
    while reader.position() < end && out.len() < limit {
        let batch = reader.try_batch(256).await.map_err(internal)?;
        if batch.is_empty() {
            break;
        }
        for r in batch {
            if r.offset >= end || out.len() >= limit {
                break;
            }
            match r.event {
                Ok(e) => out.push((r.offset, e)),
                Err(m) => tracing::error!(
                    offset = r.offset,
                    reason = m.reason,
                    "undecodable dead-letter entry skipped"
                ),
            }
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(
    State(state): State<Arc<AdminState>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    let logs = match logs(&state, &ns, &name) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let dl = logs.dead_letters.as_ref();
    let result = async {
        let from = cursor(dl).await?;
        let end = dl
            .end_offset(0)
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let entries = read_range(dl, from, end, q.limit.unwrap_or(100)).await?;
        let entries: Vec<_> = entries
            .iter()
            .map(|(o, e)| {
                json!({
                    "offset": o,
                    "trigger": e.get_str(ERROR_TRIGGER),
                    "id": e.id(),
                    "source": e.source(),
                    "type": e.ty(),
                    "errordest": e.get_str(ERROR_DEST),
                    "errorcode": e.get_str(ERROR_CODE),
                    "errordata": e.get_str(ERROR_DATA),
                })
            })
            .collect();
        Ok::<_, AdminError>(Json(json!({"broker": format!("{ns}/{name}"), "pending": end.saturating_sub(from), "entries": entries})).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn show(
    State(state): State<Arc<AdminState>>,
    Path((ns, name, offset)): Path<(String, String, u64)>,
) -> Response {
    let logs = match logs(&state, &ns, &name) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    match read_range(logs.dead_letters.as_ref(), offset, offset + 1, 1).await {
        Ok(v) => match v.into_iter().next() {
            Some((_, e)) => (
                [(http::header::CONTENT_TYPE, "application/cloudevents+json")],
                json::to_vec(&e),
            )
                .into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no dead-letter entry at offset {offset}"),
            )
            .into_response(),
        },
        Err(r) => r.into_response(),
    }
}

#[derive(Deserialize)]
struct RedriveQuery {
    to: Option<String>,
    trigger: Option<String>,
}

async fn redrive(
    State(state): State<Arc<AdminState>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<RedriveQuery>,
) -> Response {
    let to_broker = match q.to.as_deref() {
        None | Some("subscriber") => false,
        Some("broker") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("to={other}: use subscriber or broker"),
            )
            .into_response()
        }
    };
    let logs = match logs(&state, &ns, &name) {
        Ok(l) => l.clone(),
        Err(r) => return r.into_response(),
    };
    let Some(broker_cfg) = state.config.broker(&ns, &name) else {
        return error(StatusCode::NOT_FOUND, format!("no broker {ns}/{name}")).into_response();
    };
    let _one_at_a_time = state.redrive.lock().await;
    let dl = logs.dead_letters.as_ref();
    let internal =
        |e: broker::channel::ChannelError| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let result = async {
        let from = cursor(dl).await?;
        let end = dl.end_offset(0).await.map_err(internal)?;
        let entries = read_range(dl, from, end, usize::MAX).await?;
        let (mut redriven, mut failed, mut skipped) = (0u64, 0u64, 0u64);
        for (_, entry) in entries {
            let trigger_name = entry.get_str(ERROR_TRIGGER).unwrap_or("").to_owned();
            if q.trigger.as_ref().is_some_and(|t| *t != trigger_name) {
                dl.append_own(std::slice::from_ref(&entry))
                    .await
                    .map_err(internal)?;
                skipped += 1;
                continue;
            }
            let mut event = entry.clone();
            for ext in broker::event::DEAD_LETTER_EXTENSIONS {
                event.remove(ext);
            }
            if to_broker {
                logs.events
                    .append_own(std::slice::from_ref(&event))
                    .await
                    .map_err(internal)?;
                redriven += 1;
                continue;
            }
            let Some(trigger) = broker_cfg.triggers.iter().find(|t| t.name == trigger_name) else {
                tracing::warn!(trigger = %trigger_name, event_id = event.id(), "dead letter of a trigger no longer configured; kept");
                dl.append_own(std::slice::from_ref(&entry))
                    .await
                    .map_err(internal)?;
                failed += 1;
                continue;
            };
            let d = dispatcher::deliver::deliver(
                &state.client,
                &trigger.subscriber,
                &trigger.delivery,
                &event,
            )
            .await;
            if d.delivered {
                redriven += 1;
            } else {
                let mut again = dispatcher::settle::dead_letter_event(
                    &event,
                    trigger.subscriber.as_str(),
                    &d.last,
                );
                again.set(
                    ERROR_TRIGGER,
                    broker::event::AttrValue::String(trigger_name.into()),
                );
                dl.append_own(std::slice::from_ref(&again))
                    .await
                    .map_err(internal)?;
                failed += 1;
            }
        }
        dl.store_checkpoint(
            REDRIVE_CURSOR,
            &[broker::channel::CheckpointUpdate::unleased(0, end)],
            true,
        )
        .await
        .map_err(internal)?;
        let backlog = dispatcher::dead_letter_backlog(dl)
            .await
            .map_err(internal)?;
        state
            .metrics
            .dead_letter_gauge(&format!("{ns}/{name}"))
            .set(backlog as i64);
        Ok::<_, AdminError>(Json(json!({"redriven": redriven, "failed": failed, "skipped": skipped, "pending": backlog})).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}
