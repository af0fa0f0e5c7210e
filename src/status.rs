//! The status API: every broker and trigger with Knative's condition words, and
//! reloading the config.
//!
//! - `GET /admin/v1/brokers[?broker=NS/NAME]`: each broker with its address URL and
//!   `Ready`; the config generation and how the last reload went.
//! - `GET /admin/v1/triggers[?broker=NS/NAME]`: each trigger with `Ready`,
//!   `SubscriberResolved`, `DeadLetterSinkResolved`, the generation it runs, lag per
//!   partition (events behind and the age of the oldest undelivered event), counts
//!   of delivered / dead-lettered / retried and the last delivery error. Removed
//!   triggers within their grace period are listed with `Ready` `False`, reason
//!   `Removed`.
//! - `POST /admin/v1/reload`: reloads the config now; 200 with the outcome when it
//!   applied or was unchanged, 422 when the config is invalid (the previous one
//!   keeps running), 503 when applying failed.
//!
//! A condition is `{type, status, reason, message}` as in a Knative object's
//! `status.conditions`. Lag and counters are this process's: a dispatcher replica
//! reports the partitions it owns (`owned`) from its live marks and the others from
//! their stored checkpoints; an ingress-only process has no lag to report.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use broker::config::{BrokerId, TriggerConfig};
use broker::telemetry::ReloadOutcome;
use dispatcher::status::{BrokerStatus, TriggerStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::{error, query, AdminError, AdminState};
use crate::reload::ReloadStatus;

#[derive(Deserialize)]
pub(crate) struct BrokerQuery {
    broker: Option<String>,
}

fn only(q: &BrokerQuery) -> Result<Option<BrokerId>, AdminError> {
    match &q.broker {
        None => Ok(None),
        Some(b) => match b.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Some(BrokerId::new(ns, name)))
            }
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                format!("broker={b}: expected NAMESPACE/NAME"),
            )),
        },
    }
}

fn condition(ty: &str, status: bool, reason: &str, message: impl Into<String>) -> Value {
    json!({
        "type": ty,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message.into(),
    })
}

fn unknown(ty: &str, reason: &str, message: impl Into<String>) -> Value {
    json!({"type": ty, "status": "Unknown", "reason": reason, "message": message.into()})
}

fn time(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string())
        .unwrap_or_default()
}

fn reload_json(r: &ReloadStatus) -> Value {
    json!({
        "time": time(r.at),
        "cause": r.cause,
        "outcome": outcome_str(r.outcome),
        "generation": r.generation,
        "errors": r.errors,
        "changes": r.changes.len(),
        "loadSeconds": r.load.as_secs_f64(),
        "applySeconds": r.apply.as_secs_f64(),
    })
}

fn outcome_str(o: ReloadOutcome) -> &'static str {
    match o {
        ReloadOutcome::applied => "applied",
        ReloadOutcome::unchanged => "unchanged",
        ReloadOutcome::invalid => "invalid",
        ReloadOutcome::failed => "failed",
    }
}

/// The config's state: generation and last reload (`Ready` `False` while the last
/// reload was refused).
fn config_json(state: &AdminState) -> Value {
    let live = state.reloader.live();
    let last = state.reloader.last();
    let ok = last
        .as_ref()
        .is_none_or(|r| matches!(r.outcome, ReloadOutcome::applied | ReloadOutcome::unchanged));
    let ready = match &last {
        Some(r) if !ok => condition(
            "Ready",
            false,
            if r.outcome == ReloadOutcome::invalid {
                "ConfigInvalid"
            } else {
                "ApplyFailed"
            },
            format!(
                "generation {} keeps running; {}",
                live.generation,
                r.errors.join("; ")
            ),
        ),
        _ => condition(
            "Ready",
            true,
            "Applied",
            format!("generation {}", live.generation),
        ),
    };
    json!({
        "generation": live.generation,
        "conditions": [ready],
        "lastReload": last.as_ref().map(reload_json),
    })
}

/// `GET /admin/v1/brokers`.
pub(crate) async fn brokers(
    State(state): State<Arc<AdminState>>,
    q: Result<Query<BrokerQuery>, QueryRejection>,
) -> Result<Response, AdminError> {
    let (only, live) = selected(&state, q)?;
    let dispatched = dispatched(&state, only.as_ref()).await;
    let mut out = Vec::new();
    for b in &live.config.brokers {
        if only.as_ref().is_some_and(|o| o != &b.id) {
            continue;
        }
        let d = dispatched
            .as_ref()
            .and_then(|d| d.iter().find(|s| s.id == b.id));
        let dispatch = match (&dispatched, d) {
            (None, _) => unknown(
                "DispatcherReady",
                "NotInThisProcess",
                "dispatched by dispatcher processes",
            ),
            (Some(_), Some(s)) if s.dispatching => condition(
                "DispatcherReady",
                true,
                "Dispatching",
                format!(
                    "{} of {} partitions dispatched here",
                    s.owned.len(),
                    s.partitions
                ),
            ),
            (Some(_), _) => condition("DispatcherReady", true, "NoTriggers", "nothing to dispatch"),
        };
        // Knative's status.policies and EventPoliciesReady.
        let policies: Vec<_> = b
            .policies
            .iter()
            .map(|p| json!({"apiVersion": broker::config::policy::API_VERSION, "name": p.name}))
            .collect();
        let authorization = if b.policies.is_empty() {
            condition(
                "EventPoliciesReady",
                true,
                "DefaultAuthorizationMode",
                "no EventPolicy applies; the default authorization mode decides",
            )
        } else {
            let names: Vec<&str> = b.policies.iter().map(|p| p.name.as_str()).collect();
            condition(
                "EventPoliciesReady",
                true,
                "EventPoliciesReady",
                format!("applying: {}", names.join(", ")),
            )
        };
        out.push(json!({
            "namespace": b.id.namespace,
            "name": b.id.name,
            "address": {
                "url": state.addresses.broker_url(&b.id),
                "audience": ingress::auth::audience(&b.id),
            },
            "generation": live.generation,
            "triggers": b.triggers.len(),
            "partitions": live.logs.get(&b.id).map(|l| l.events.partitions()),
            "policies": policies,
            "conditions": [
                condition("Ready", true, "BrokerReady", "accepting and storing events"),
                condition("Addressable", true, "Addressable", state.addresses.broker_url(&b.id)),
                dispatch,
                authorization,
            ],
        }));
    }
    Ok(Json(json!({"config": config_json(&state), "brokers": out})).into_response())
}

/// The `?broker=` asked for (404 when not configured) and the running config.
fn selected(
    state: &AdminState,
    q: Result<Query<BrokerQuery>, QueryRejection>,
) -> Result<(Option<BrokerId>, Arc<crate::reload::Live>), AdminError> {
    let only = only(&query(q)?)?;
    let live = state.reloader.live();
    if let Some(o) = &only {
        if live.config.broker(&o.namespace, &o.name).is_none() {
            return Err(error(StatusCode::NOT_FOUND, format!("no broker {o}")));
        }
    }
    Ok((only, live))
}

async fn dispatched(state: &AdminState, only: Option<&BrokerId>) -> Option<Vec<BrokerStatus>> {
    let d = state.reloader.dispatcher()?;
    Some(d.lock().await.status(only).await)
}

/// `GET /admin/v1/triggers`.
pub(crate) async fn triggers(
    State(state): State<Arc<AdminState>>,
    q: Result<Query<BrokerQuery>, QueryRejection>,
) -> Result<Response, AdminError> {
    let (only, live) = selected(&state, q)?;
    let dispatched = dispatched(&state, only.as_ref()).await;
    let mut out = Vec::new();
    match &dispatched {
        Some(brokers) => {
            for b in brokers {
                for t in &b.triggers {
                    out.push(trigger_json(&b.id, t, live.generation));
                }
            }
        }
        // An ingress-only process knows the config, not the progress.
        None => {
            for b in &live.config.brokers {
                if only.as_ref().is_some_and(|o| o != &b.id) {
                    continue;
                }
                for t in &b.triggers {
                    let mut v = config_fields(&b.id, &t.name, Some(t), live.generation);
                    v["conditions"] = json!([
                        unknown(
                            "Ready",
                            "NotInThisProcess",
                            "dispatched by dispatcher processes"
                        ),
                        subscriber_resolved(t),
                        dead_letter_resolved(t),
                    ]);
                    out.push(v);
                }
            }
        }
    }
    Ok(Json(json!({"config": config_json(&state), "triggers": out})).into_response())
}

fn subscriber_resolved(t: &TriggerConfig) -> Value {
    condition(
        "SubscriberResolved",
        true,
        "Resolved",
        t.subscriber.as_str(),
    )
}

fn dead_letter_resolved(t: &TriggerConfig) -> Value {
    match &t.delivery.dead_letter_sink {
        Some(s) => condition("DeadLetterSinkResolved", true, "Resolved", s.as_str()),
        // Knative's words for a trigger without one.
        None => condition(
            "DeadLetterSinkResolved",
            true,
            "DeadLetterSinkNotConfigured",
            "no dead letter sink is configured; failed events go to the broker's dead-letter log",
        ),
    }
}

fn config_fields(
    broker: &BrokerId,
    name: &str,
    t: Option<&TriggerConfig>,
    generation: u64,
) -> Value {
    json!({
        "namespace": broker.namespace,
        "name": name,
        "broker": broker.to_string(),
        "generation": generation,
        "subscriberUri": t.map(|t| t.subscriber.as_str()),
        "deadLetterSinkUri": t.and_then(|t| t.delivery.dead_letter_sink.as_ref().map(|s| s.as_str())),
    })
}

fn trigger_json(broker: &BrokerId, t: &TriggerStatus, generation: u64) -> Value {
    let mut v = config_fields(broker, &t.name, t.config.as_deref(), generation);
    let conditions = match &t.config {
        Some(cfg) => vec![
            condition("Ready", true, "Ready", "dispatching"),
            condition("BrokerReady", true, "BrokerReady", ""),
            subscriber_resolved(cfg),
            dead_letter_resolved(cfg),
        ],
        None => vec![condition(
            "Ready",
            false,
            "Removed",
            format!(
                "removed from the config {} s ago; its checkpoint is kept for the grace period (re-added, it resumes)",
                t.removed_for.map_or(0, |d| d.as_secs())
            ),
        )],
    };
    let behind: u64 = t.partitions.iter().map(|p| p.behind).sum();
    let oldest = t
        .partitions
        .iter()
        .filter_map(|p| p.oldest_age)
        .max()
        .map(|d| d.as_secs_f64());
    let partitions: Vec<Value> = t
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "owned": p.owned,
                "checkpoint": p.checkpoint,
                "end": p.end,
                "behind": p.behind,
                "oldestAgeSeconds": p.oldest_age.map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    v["state"] = json!(if t.config.is_some() {
        "active"
    } else {
        "removed"
    });
    v["changedInGeneration"] = json!(t.changed_in);
    v["conditions"] = json!(conditions);
    v["lag"] = json!({
        "events": behind,
        "oldestAgeSeconds": oldest,
        "partitions": partitions,
    });
    v["delivered"] = json!(t.delivered);
    v["deadLettered"] = json!(t.dead_lettered);
    v["retried"] = json!(t.retried);
    v["lastDeliveryError"] = json!(t.last_error.as_ref().map(|e| json!({
        "time": time(e.at),
        "status": e.status,
        "message": e.message,
    })));
    v
}

/// `POST /admin/v1/reload`.
pub(crate) async fn reload(State(state): State<Arc<AdminState>>) -> Response {
    let r = state.reloader.reload("api").await;
    let code = match r.outcome {
        ReloadOutcome::applied | ReloadOutcome::unchanged => StatusCode::OK,
        ReloadOutcome::invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ReloadOutcome::failed => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut body = reload_json(&r);
    body["changes"] = json!(r.changes);
    (code, Json(body)).into_response()
}
