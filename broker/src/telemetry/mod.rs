//! Metric names and label sets, in one place, and tracing set-up.
//!
//! Labels are bounded: `broker` (`namespace/name` of a configured broker, or `""` for
//! requests naming an unknown one), `trigger`, `reason`, `outcome`. Never event ids or
//! URLs. Hot paths do not look metrics up per event: callers resolve handles once per
//! broker or trigger ([`Metrics::ingress`], [`Metrics::trigger`]) and increment those.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, MetricEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

mod triggers;
use triggers::TriggerSet;
pub use triggers::{Count, Level, TriggerMetrics, TriggerSeries};

/// Why the admin API refused a request (`triggerfish_admin_refused_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AdminRefusal {
    /// No bearer token where `--admin-token-file` is set.
    no_token,
    /// A token that is not the admin token.
    bad_token,
    /// A `Host` that is not this admin API's (DNS rebinding).
    host,
    /// An `Origin` not in `--admin-allowed-origin` (a browser page).
    origin,
    /// `Sec-Fetch-Site: cross-site` or `same-site` (a browser page of another site).
    cross_site,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminRefusalLabels {
    reason: AdminRefusal,
}

/// Why the ingress refused an event.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RejectReason {
    /// Not a valid CloudEvent (400).
    invalid,
    /// Unknown broker (404).
    unknown_broker,
    /// Body over the limit (413).
    too_large,
    /// Unsupported content type (415).
    unsupported_media_type,
    /// The channel could not take it (503).
    unavailable,
    /// More attributes than `--max-attributes` (431 in binary mode, else 413).
    too_many_attributes,
    /// An attribute name longer than `--max-attribute-name-bytes` (431 / 413).
    attribute_name_too_long,
    /// Attributes larger than `--max-attribute-bytes` altogether (431 / 413).
    attributes_too_large,
    /// The partition is at `--retention-bytes` and a trigger has not yet received
    /// its oldest events (503; see `ingress_retention_blocked`).
    retention_full,
    /// The memory budget was used up (503, `--memory-budget`).
    memory_budget,
    /// The body did not arrive in time (408, `--body-read-timeout`).
    body_timeout,
    /// No sender identity, or an invalid token (401; the reason in
    /// `ingress_auth_refused_total`).
    unauthenticated,
    /// A sender no EventPolicy (or the default authorization mode) admits, or an
    /// event a policy's filters refuse (403).
    forbidden,
    /// Over the broker's or the sender's rate limit (429).
    rate_limited,
}

/// Why the ingress refused a sender (`triggerfish_ingress_auth_refused_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AuthRefusal {
    /// No bearer token (and no client certificate identity) where one is needed.
    missing_token,
    /// Not a JWT, or one with claims of the wrong types.
    malformed_token,
    /// Signed with an algorithm other than RS256, ES256 or EdDSA, or another than
    /// its key's.
    algorithm,
    /// An `iss` that is not a configured issuer.
    unknown_issuer,
    /// A `kid` its issuer's keys do not have, even after a refresh.
    unknown_key,
    /// The issuer's keys could not be fetched.
    keys_unavailable,
    /// A signature that does not verify.
    bad_signature,
    /// Past `exp` (beyond the clock skew).
    expired,
    /// Before `nbf` (beyond the clock skew).
    not_yet_valid,
    /// An `aud` that is not the broker's audience.
    wrong_audience,
    /// No applying EventPolicy admits the sender.
    policy_sender,
    /// The sender is admitted, but an event does not pass the policies' filters.
    policy_filter,
    /// The default authorization mode refuses the sender.
    default_mode,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthRefusalLabels {
    reason: AuthRefusal,
}

/// Which rate limit refused a request (`triggerfish_ingress_rate_limited_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RateScope {
    /// The broker's own limit.
    broker,
    /// The limit per sender identity.
    sender,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLabels {
    broker: Arc<str>,
    scope: RateScope,
}

/// What finally happened to one delivery.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// The subscriber answered 2xx.
    delivered,
    /// Delivery failed for good; the event went to the dead-letter sink.
    dead_lettered,
    /// Delivery failed for good and no sink took it; it is in the broker's own
    /// dead-letter log.
    dead_letter_log,
}

/// Something that went wrong with one event or lane, other than a failed delivery.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LaneFailure {
    /// Settling an event panicked; the event went to the dead-letter log.
    panic,
    /// The event cannot be sent over HTTP at all (its attributes exceed what a
    /// request can carry); it went to the dead-letter log without an attempt.
    undeliverable,
    /// A lane task ended while its partition was still dispatched, and was restarted
    /// from its checkpoint.
    restart,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    broker: Arc<str>,
    trigger: Arc<str>,
    kind: LaneFailure,
}

/// What happened to a reply event.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReplyOutcome {
    /// Appended to the broker.
    stored,
    /// Dropped: its `knativebrokerttl` ran out (a reply loop).
    dropped_ttl,
    /// Unreadable, invalid, over a limit or too large for the channel: the event
    /// went to the broker's dead-letter log with the reason.
    dead_lettered,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabels {
    broker: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedriveLabels {
    broker: Arc<str>,
    outcome: RedriveOutcome,
}

/// What a redrive did with one dead-letter entry (`outcome` of
/// `triggerfish_dead_letter_redriven_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RedriveOutcome {
    /// Delivered to its trigger's subscriber, or appended to the broker again.
    sent,
    /// Its subscriber failed again: back at the end of the log with the new error.
    failed_again,
    /// Another trigger's entry (a redrive of one trigger): moved to the end unchanged.
    other_trigger,
    /// Its trigger is no longer configured: moved to the end unchanged.
    trigger_gone,
    /// Not a CloudEvent: left where it is and listed in the redrive's report.
    undecodable,
}

/// Why the ingress (or admin) listener closed or refused a connection (`reason` of
/// `triggerfish_ingress_connections_closed_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ConnectionClosed {
    /// A request head was not complete within `--header-read-timeout`.
    header_timeout,
    /// No request for `--idle-timeout`.
    idle_timeout,
    /// `--max-connections` were open: answered 503 and closed.
    over_limit,
    /// Still open at the end of `--shutdown-timeout`.
    shutdown,
    /// The TLS handshake failed (no or an untrusted client certificate under mTLS,
    /// a client that does not speak TLS) or did not finish within
    /// `--header-read-timeout`.
    tls_handshake,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    reason: ConnectionClosed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    broker: Arc<str>,
    reason: RejectReason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    broker: Arc<str>,
    trigger: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplyLabels {
    broker: Arc<str>,
    trigger: Arc<str>,
    outcome: ReplyOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    broker: Arc<str>,
    trigger: Arc<str>,
    outcome: Outcome,
}

/// Every metric Triggerfish exports.
pub struct Metrics {
    registry: Registry,
    accepted: Family<BrokerLabels, Counter>,
    deduplicated: Family<BrokerLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    retention_blocked: Family<TriggerLabels, Counter>,
    dead_letter_entries: Family<BrokerLabels, Gauge>,
    malformed: Family<BrokerLabels, Counter>,
    partitions: Family<BrokerLabels, Gauge>,
    unowned: Family<BrokerLabels, Gauge>,
    parked: Family<BrokerLabels, Gauge>,
    redriven: Family<RedriveLabels, Counter>,
    triggers: Arc<TriggerSet>,
    connections: Gauge,
    connections_closed: Family<ConnectionLabels, Counter>,
    /// The memory budget's limit and use, in bytes (`--memory-budget`).
    pub memory_budget: Gauge,
    /// Event bytes held now under the memory budget.
    pub memory_used: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    admin_refused: Family<AdminRefusalLabels, Counter>,
    tls_reloads: Family<ReloadLabels, Counter>,
    auth_refused: Family<AuthRefusalLabels, Counter>,
    rate_limited: Family<RateLabels, Counter>,
    jwks_refreshes: Family<ReloadLabels, Counter>,
    /// Verified tokens held in the OIDC token cache.
    pub token_cache_entries: Gauge,
    /// The bound on audit lines (`--audit-log-rate`).
    pub audit: crate::audit::AuditGate,
    /// The generation of the config applied last (1 at start, +1 per reload that
    /// changed something or not).
    pub config_generation: Gauge,
    /// How long the last config apply took, in seconds.
    pub config_apply_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// How a config reload ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadOutcome {
    /// Loaded, validated and applied.
    applied,
    /// Unchanged: nothing to apply.
    unchanged,
    /// Refused: the config is invalid; the previous one keeps running.
    invalid,
    /// Valid, but applying it failed (a channel error); retried on the next reload.
    failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: ReloadOutcome,
}

/// Pre-resolved ingress counters of one broker.
#[derive(Clone)]
pub struct IngressMetrics {
    /// Events accepted (202).
    pub accepted: Counter,
    /// Accepted events the channel recognised as a producer's retry of one it had
    /// stored moments before, and stored once (NATS JetStream's duplicate window).
    pub deduplicated: Counter,
    rejected: Family<RejectLabels, Counter>,
    retention_blocked: Family<TriggerLabels, Counter>,
    broker: Arc<str>,
}

impl IngressMetrics {
    /// Counts `n` events refused because `trigger` holds its partition at the
    /// retention limit.
    pub fn retention_blocked(&self, trigger: &str, n: u64) {
        self.retention_blocked
            .get_or_create(&TriggerLabels {
                broker: self.broker.clone(),
                trigger: trigger.into(),
            })
            .inc_by(n);
    }

    /// Counts `n` rejected events.
    pub fn reject(&self, reason: RejectReason, n: u64) {
        self.rejected
            .get_or_create(&RejectLabels {
                broker: self.broker.clone(),
                reason,
            })
            .inc_by(n);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("triggerfish");
        let accepted = Family::<BrokerLabels, Counter>::default();
        let deduplicated = Family::<BrokerLabels, Counter>::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        let retention_blocked = Family::<TriggerLabels, Counter>::default();
        let dead_letter_entries = Family::<BrokerLabels, Gauge>::default();
        let malformed = Family::<BrokerLabels, Counter>::default();
        let partitions = Family::<BrokerLabels, Gauge>::default();
        let unowned = Family::<BrokerLabels, Gauge>::default();
        let parked = Family::<BrokerLabels, Gauge>::default();
        let redriven = Family::<RedriveLabels, Counter>::default();
        registry.register(
            "ingress_events_accepted",
            "Events stored durably and answered 202",
            accepted.clone(),
        );
        registry.register(
            "ingress_events_deduplicated",
            "Accepted events stored once as a producer's retry of an event stored moments before (NATS duplicate window)",
            deduplicated.clone(),
        );
        registry.register(
            "ingress_events_rejected",
            "Events refused by the ingress, by reason",
            rejected.clone(),
        );
        registry.register(
            "ingress_retention_blocked",
            "Events refused (503) because their partition is at --retention-bytes and this trigger has not received its oldest events",
            retention_blocked.clone(),
        );
        registry.register(
            "dead_letter_log_entries",
            "Events waiting in the broker's dead-letter log (not yet redriven)",
            dead_letter_entries.clone(),
        );
        registry.register(
            "dispatcher_partitions",
            "Partitions of the broker this process dispatches now (its leases)",
            partitions.clone(),
        );
        registry.register(
            "dispatcher_unowned_partitions",
            "Partitions of the broker that no dispatcher process owns, as this process last saw them",
            unowned.clone(),
        );
        registry.register(
            "dispatcher_parked_lanes",
            "Lanes (trigger x partition) of the broker idle enough to hold no queue or task state",
            parked.clone(),
        );
        registry.register(
            "dead_letter_redriven",
            "Dead-letter entries a redrive passed, by what it did with them",
            redriven.clone(),
        );
        registry.register(
            "dispatcher_malformed_records",
            "Stored records that are not valid CloudEvents, moved to the dead-letter log",
            malformed.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "ingress_connections",
            "Connections open on the ingress listener",
            connections.clone(),
        );
        let connections_closed = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "ingress_connections_closed",
            "Connections closed or refused by a limit, by reason",
            connections_closed.clone(),
        );
        let memory_budget = Gauge::default();
        registry.register(
            "memory_budget_bytes",
            "The memory budget for event bytes (--memory-budget)",
            memory_budget.clone(),
        );
        let memory_used = Gauge::default();
        registry.register(
            "memory_used_bytes",
            "Event bytes held under the memory budget: requests being read and stored, events queued or in flight to subscribers, replies being read",
            memory_used.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads (file change, SIGHUP, POST /admin/v1/reload), by outcome",
            reloads.clone(),
        );
        let admin_refused = Family::<AdminRefusalLabels, Counter>::default();
        registry.register(
            "admin_refused",
            "Admin API requests refused (no or a wrong token, a browser's request), by reason",
            admin_refused.clone(),
        );
        let tls_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "TLS certificate and key files read again after they changed, by outcome (applied, or invalid: the previous pair stays)",
            tls_reloads.clone(),
        );
        let auth_refused = Family::<AuthRefusalLabels, Counter>::default();
        registry.register(
            "ingress_auth_refused",
            "Ingress requests refused for their sender (401, 403), by reason",
            auth_refused.clone(),
        );
        let rate_limited = Family::<RateLabels, Counter>::default();
        registry.register(
            "ingress_rate_limited",
            "Ingress requests answered 429 by a rate limit, by broker and scope (broker, sender)",
            rate_limited.clone(),
        );
        let jwks_refreshes = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "oidc_jwks_refreshes",
            "OIDC issuers' keys fetched again (periodically or for an unknown kid), by outcome (applied, unchanged, failed)",
            jwks_refreshes.clone(),
        );
        let audit_suppressed = Counter::default();
        registry.register(
            "audit_lines_suppressed",
            "Audit lines (refused senders and admin requests) not written because of --audit-log-rate; the refusals are counted in their own metrics",
            audit_suppressed.clone(),
        );
        let token_cache_entries = Gauge::default();
        registry.register(
            "oidc_token_cache_entries",
            "Verified tokens cached until they expire (--oidc-token-cache-size)",
            token_cache_entries.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the config running now",
            config_generation.clone(),
        );
        let config_apply_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "config_apply_seconds",
            "How long applying the last changed config took",
            config_apply_seconds.clone(),
        );
        let triggers = Arc::new(TriggerSet::default());
        registry.register_collector(Box::new(triggers.clone()));
        Metrics {
            triggers,
            reloads,
            admin_refused,
            tls_reloads,
            auth_refused,
            rate_limited,
            jwks_refreshes,
            token_cache_entries,
            audit: crate::audit::AuditGate::new(audit_suppressed),
            config_generation,
            config_apply_seconds,
            connections,
            connections_closed,
            memory_budget,
            memory_used,
            registry,
            accepted,
            deduplicated,
            rejected,
            retention_blocked,
            dead_letter_entries,
            malformed,
            partitions,
            unowned,
            parked,
            redriven,
        }
    }

    /// The gauge of open ingress connections.
    pub fn connections_gauge(&self) -> Gauge {
        self.connections.clone()
    }

    /// The counter of connections closed or refused for `reason`.
    pub fn connections_closed(&self, reason: ConnectionClosed) -> Counter {
        self.connections_closed
            .get_or_create(&ConnectionLabels { reason })
            .clone()
    }

    /// Counts an admin API request refused.
    pub fn admin_refused(&self, reason: AdminRefusal) {
        self.admin_refused
            .get_or_create(&AdminRefusalLabels { reason })
            .inc();
    }

    /// Counts a reload of a listener's TLS files.
    pub fn tls_reload(&self, outcome: ReloadOutcome) {
        self.tls_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
    }

    /// Counts a sender refused by the ingress.
    pub fn auth_refused(&self, reason: AuthRefusal) {
        self.auth_refused
            .get_or_create(&AuthRefusalLabels { reason })
            .inc();
    }

    /// Senders refused for `reason` so far.
    pub fn auth_refusals(&self, reason: AuthRefusal) -> u64 {
        self.auth_refused
            .get_or_create(&AuthRefusalLabels { reason })
            .get()
    }

    /// Counts a request answered 429 by a rate limit.
    pub fn rate_limited(&self, broker: &str, scope: RateScope) {
        self.rate_limited
            .get_or_create(&RateLabels {
                broker: broker.into(),
                scope,
            })
            .inc();
    }

    /// Counts a refresh of an OIDC issuer's keys.
    pub fn jwks_refresh(&self, outcome: ReloadOutcome) {
        self.jwks_refreshes
            .get_or_create(&ReloadLabels { outcome })
            .inc();
    }

    /// Counts a config reload.
    pub fn config_reload(&self, outcome: ReloadOutcome) {
        self.reloads.get_or_create(&ReloadLabels { outcome }).inc();
    }

    /// Reloads counted with `outcome` so far.
    pub fn config_reloads(&self, outcome: ReloadOutcome) -> u64 {
        self.reloads.get_or_create(&ReloadLabels { outcome }).get()
    }

    /// A shared handle.
    pub fn shared() -> Arc<Metrics> {
        Arc::new(Metrics::new())
    }

    /// Ingress counters of one broker (`""` for unknown brokers).
    pub fn ingress(&self, broker: &str) -> IngressMetrics {
        IngressMetrics {
            accepted: self
                .accepted
                .get_or_create(&BrokerLabels {
                    broker: broker.into(),
                })
                .clone(),
            deduplicated: self
                .deduplicated
                .get_or_create(&BrokerLabels {
                    broker: broker.into(),
                })
                .clone(),
            rejected: self.rejected.clone(),
            retention_blocked: self.retention_blocked.clone(),
            broker: broker.into(),
        }
    }

    /// Delivery metrics of one trigger: the same series for the same names, also
    /// after the trigger was removed and added again.
    pub fn trigger(&self, broker: &str, trigger: &str) -> TriggerMetrics {
        self.triggers
            .get_or_create(broker, trigger, || self.dead_letter_gauge(broker))
    }

    /// The gauge of entries waiting in a broker's dead-letter log.
    pub fn dead_letter_gauge(&self, broker: &str) -> Gauge {
        self.dead_letter_entries
            .get_or_create(&BrokerLabels {
                broker: broker.into(),
            })
            .clone()
    }

    /// The gauge of a broker's partitions that no dispatcher process owns.
    pub fn unowned_partitions_gauge(&self, broker: &str) -> Gauge {
        self.unowned
            .get_or_create(&BrokerLabels {
                broker: broker.into(),
            })
            .clone()
    }

    /// The gauge of a broker's parked lanes.
    pub fn parked_lanes_gauge(&self, broker: &str) -> Gauge {
        self.parked
            .get_or_create(&BrokerLabels {
                broker: broker.into(),
            })
            .clone()
    }

    /// The gauge of partitions of a broker this process dispatches.
    pub fn partitions_gauge(&self, broker: &str) -> Gauge {
        self.partitions
            .get_or_create(&BrokerLabels {
                broker: broker.into(),
            })
            .clone()
    }

    /// The counter of dead-letter entries of a broker a redrive passed with `outcome`.
    pub fn redrive_counter(&self, broker: &str, outcome: RedriveOutcome) -> Counter {
        self.redriven
            .get_or_create(&RedriveLabels {
                broker: broker.into(),
                outcome,
            })
            .clone()
    }

    /// The counter of malformed records found in a broker's log.
    pub fn malformed_counter(&self, broker: &str) -> Counter {
        self.malformed
            .get_or_create(&BrokerLabels {
                broker: broker.into(),
            })
            .clone()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Installs the global tracing subscriber: human-readable by default, JSON lines with
/// `json`. `filter` uses `RUST_LOG` syntax; the `RUST_LOG` variable wins when set.
pub fn init_tracing(json: bool, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_exposition() {
        let m = Metrics::new();
        let ing = m.ingress("default/b");
        ing.accepted.inc_by(3);
        ing.reject(RejectReason::invalid, 2);
        let t = m.trigger("default/b", "t1");
        t.delivered.inc();
        let idle = m.encode();
        assert!(
            !idle.contains("delivery_duration_seconds_count{"),
            "no histogram before the first delivery: {idle}"
        );
        assert!(
            idle.contains(
                r#"triggerfish_dispatcher_attempts_total{broker="default/b",trigger="t1"} 0"#
            ),
            "{idle}"
        );
        t.observe_latency(0.01);
        t.dead_letter_logged();
        assert_eq!(t.dead_letter_counts(), (0, 1));
        let text = m.encode();
        assert!(
            text.contains(r#"triggerfish_ingress_events_accepted_total{broker="default/b"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"triggerfish_ingress_events_rejected_total{broker="default/b",reason="invalid"} 2"#), "{text}");
        assert!(text.contains(r#"triggerfish_dispatcher_deliveries_total{broker="default/b",trigger="t1",outcome="delivered"} 1"#), "{text}");
        assert!(
            text.contains("triggerfish_dispatcher_delivery_duration_seconds_count"),
            "{text}"
        );
    }

    #[test]
    fn trigger_series_are_one_family_per_metric_and_survive_readding() {
        let m = Metrics::new();
        let a = m.trigger("default/b", "a");
        let b = m.trigger("default/b", "b");
        let other = m.trigger("ns/c", "a");
        a.delivered.inc_by(2);
        b.attempts.inc();
        other.lag.set(7);
        b.reply_stored();
        b.lane_failure(LaneFailure::restart);
        b.skipped(3);
        b.dead_lettered();
        // The same names give the same series: a re-added trigger counts on.
        drop(a);
        let again = m.trigger("default/b", "a");
        again.delivered.inc();
        assert_eq!(again.delivered.get(), 3);
        let text = m.encode();
        for name in [
            "dispatcher_deliveries",
            "dispatcher_attempts",
            "dispatcher_retries",
            "dispatcher_replies",
            "dispatcher_events_skipped",
            "dispatcher_lane_failures",
            "dispatcher_delivery_duration_seconds",
            "trigger_lag_events",
        ] {
            let ty = format!("# TYPE triggerfish_{name} ");
            assert_eq!(text.matches(&ty).count(), 1, "{name}: {text}");
        }
        for line in [
            r#"triggerfish_dispatcher_deliveries_total{broker="default/b",trigger="a",outcome="delivered"} 3"#,
            r#"triggerfish_dispatcher_deliveries_total{broker="default/b",trigger="b",outcome="dead_lettered"} 1"#,
            r#"triggerfish_dispatcher_attempts_total{broker="default/b",trigger="b"} 1"#,
            r#"triggerfish_dispatcher_retries_total{broker="ns/c",trigger="a"} 0"#,
            r#"triggerfish_dispatcher_replies_total{broker="default/b",trigger="b",outcome="stored"} 1"#,
            r#"triggerfish_dispatcher_events_skipped_total{broker="default/b",trigger="b"} 3"#,
            r#"triggerfish_dispatcher_lane_failures_total{broker="default/b",trigger="b",kind="restart"} 1"#,
            r#"triggerfish_trigger_lag_events{broker="ns/c",trigger="a"} 7"#,
        ] {
            assert!(text.contains(line), "{line} missing: {text}");
        }
        // Rare series only once counted.
        for absent in [
            r#"trigger="a",outcome="dead_lettered""#,
            r#"trigger="a",outcome="stored""#,
            r#"triggerfish_dispatcher_events_skipped_total{broker="default/b",trigger="a"}"#,
            r#"kind="panic""#,
        ] {
            assert!(!text.contains(absent), "{absent} present: {text}");
        }
        // The broker's name is stored once for its triggers.
        assert!(Arc::ptr_eq(&again.broker, &b.broker));
    }
}
