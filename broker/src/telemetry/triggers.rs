//! Per-trigger delivery series: one allocation per trigger with its counters
//! inline ([`TriggerMetrics`]), written by one registry collector ([`TriggerSet`])
//! at scrape time rather than kept as entries of registered families.

use super::*;

/// The delivery metrics of one trigger: one shared allocation (the lane, its
/// runtime and its slot all hold it), with its counters inline. They are not
/// entries of registered families: [`TriggerSet`] writes every trigger's series at
/// scrape time, so an idle trigger costs this allocation and one map entry, not a
/// hash-map entry and a counter allocation per series (about 600 bytes at 10,000
/// triggers). Series every trigger moves (deliveries, attempts, retries, lag) are
/// written from the start; the others once they are non-zero, and the latency
/// histogram (18 buckets) is created on the first delivery.
#[derive(Clone)]
pub struct TriggerMetrics(Arc<TriggerSeries>);

impl std::ops::Deref for TriggerMetrics {
    type Target = TriggerSeries;
    fn deref(&self) -> &TriggerSeries {
        &self.0
    }
}

/// A monotonic count of one trigger's series.
#[derive(Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A level (a gauge) of one trigger's series.
#[derive(Default)]
pub struct Level(AtomicI64);

impl Level {
    /// Sets the level.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The level now.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// See [`TriggerMetrics`].
pub struct TriggerSeries {
    /// Deliveries that ended with a 2xx.
    pub delivered: Count,
    /// Every HTTP attempt to the subscriber, retries included.
    pub attempts: Count,
    /// Retries (attempts after the first).
    pub retries: Count,
    /// Entries waiting in the broker's dead-letter log (the broker's gauge).
    pub dead_letter_entries: Gauge,
    /// Events behind on the partitions this process dispatches.
    pub lag: Level,
    to_sink: Count,
    to_log: Count,
    replies: [Count; 3],
    failures: [Count; 3],
    skipped: Count,
    latency: std::sync::OnceLock<Histogram>,
    pub(super) broker: Arc<str>,
    trigger: Arc<str>,
}

const REPLY_OUTCOMES: [ReplyOutcome; 3] = [
    ReplyOutcome::stored,
    ReplyOutcome::dropped_ttl,
    ReplyOutcome::dead_lettered,
];
const LANE_FAILURES: [LaneFailure; 3] = [
    LaneFailure::panic,
    LaneFailure::undeliverable,
    LaneFailure::restart,
];

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl TriggerSeries {
    fn labels(&self) -> TriggerLabels {
        TriggerLabels {
            broker: self.broker.clone(),
            trigger: self.trigger.clone(),
        }
    }

    /// Counts a delivery that failed and went to the trigger's dead-letter sink.
    pub fn dead_lettered(&self) {
        self.to_sink.inc();
    }

    /// Counts a delivery that failed and went to the broker's dead-letter log.
    pub fn dead_letter_logged(&self) {
        self.to_log.inc();
    }

    /// Deliveries that went to the dead-letter sink and to the dead-letter log.
    pub fn dead_letter_counts(&self) -> (u64, u64) {
        (self.to_sink.get(), self.to_log.get())
    }

    /// Counts a reply appended to the broker.
    pub fn reply_stored(&self) {
        self.replies[0].inc();
    }

    /// Counts a reply dropped because its TTL ran out.
    pub fn reply_dropped_ttl(&self) {
        self.replies[1].inc();
    }

    /// Counts a reply that could not be stored (the event went to the dead-letter
    /// log).
    pub fn reply_dead_lettered(&self) {
        self.replies[2].inc();
    }

    /// Records the seconds from the first attempt to the final outcome.
    pub fn observe_latency(&self, seconds: f64) {
        self.latency.get_or_init(latency_histogram).observe(seconds);
    }

    /// Counts a lane failure: a panic or an undeliverable event (both dead-lettered),
    /// or a lane restart.
    pub fn lane_failure(&self, kind: LaneFailure) {
        let i = LANE_FAILURES.iter().position(|k| *k == kind).unwrap_or(0);
        self.failures[i].inc();
    }

    /// Counts offsets this trigger never read: retention deleted them first.
    pub fn skipped(&self, n: u64) {
        self.skipped.inc_by(n);
    }
}

/// Every trigger's series, by broker and trigger name: a [`Collector`] of the
/// registry that writes them at scrape time in name order. Entries stay after a
/// trigger is removed (as family entries would), so a trigger re-added under its
/// name counts on from where it stopped.
#[derive(Default)]
pub(super) struct TriggerSet(std::sync::Mutex<BTreeMap<Arc<str>, BrokerTriggers>>);

/// One broker's trigger series by trigger name.
type BrokerTriggers = BTreeMap<Arc<str>, TriggerMetrics>;

impl std::fmt::Debug for TriggerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TriggerSet")
    }
}

impl TriggerSet {
    pub(super) fn get_or_create(
        &self,
        broker: &str,
        trigger: &str,
        dead_letter: impl FnOnce() -> Gauge,
    ) -> TriggerMetrics {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let triggers = match map.get_mut(broker) {
            Some(t) => t,
            None => map.entry(broker.into()).or_default(),
        };
        if let Some(m) = triggers.get(trigger) {
            return m.clone();
        }
        // One copy of the broker's name, shared by its triggers' series.
        let broker = map
            .get_key_value(broker)
            .map_or_else(|| Arc::from(broker), |(k, _)| k.clone());
        let trigger: Arc<str> = trigger.into();
        let m = TriggerMetrics(Arc::new(TriggerSeries {
            delivered: Count::default(),
            attempts: Count::default(),
            retries: Count::default(),
            dead_letter_entries: dead_letter(),
            lag: Level::default(),
            to_sink: Count::default(),
            to_log: Count::default(),
            replies: Default::default(),
            failures: Default::default(),
            skipped: Count::default(),
            latency: std::sync::OnceLock::new(),
            broker: broker.clone(),
            trigger: trigger.clone(),
        }));
        if let Some(t) = map.get_mut(&broker) {
            t.insert(trigger, m.clone());
        }
        m
    }

    /// Writes one metric: `each` writes a series' samples (none, one or several).
    fn family(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        ty: MetricType,
        each: impl Fn(&TriggerSeries, &mut MetricEncoder) -> Result<(), std::fmt::Error>,
    ) -> Result<(), std::fmt::Error> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut metric = enc.encode_descriptor(name, help, None, ty)?;
        for m in map.values().flat_map(|t| t.values()) {
            each(m, &mut metric)?;
        }
        Ok(())
    }
}

fn counter_sample(
    metric: &mut MetricEncoder,
    labels: &impl EncodeLabelSet,
    v: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(metric.encode_family(labels)?)
}

/// One sample per kind whose count is not zero, labelled by `labels(kind)`.
fn nonzero_samples<K: Copy, L: EncodeLabelSet>(
    metric: &mut MetricEncoder,
    kinds: &[K],
    counts: &[Count],
    labels: impl Fn(K) -> L,
) -> Result<(), std::fmt::Error> {
    for (kind, c) in kinds.iter().zip(counts) {
        let v = c.get();
        if v > 0 {
            counter_sample(metric, &labels(*kind), v)?;
        }
    }
    Ok(())
}

impl Collector for TriggerSet {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let outcomes = [
            (Outcome::delivered, true),
            (Outcome::dead_lettered, false),
            (Outcome::dead_letter_log, false),
        ];
        self.family(
            &mut enc,
            "dispatcher_deliveries",
            "Deliveries by final outcome",
            MetricType::Counter,
            |m, metric| {
                let counts = [m.delivered.get(), m.to_sink.get(), m.to_log.get()];
                for ((outcome, always), v) in outcomes.iter().zip(counts) {
                    if *always || v > 0 {
                        let labels = DeliveryLabels {
                            broker: m.broker.clone(),
                            trigger: m.trigger.clone(),
                            outcome: *outcome,
                        };
                        counter_sample(metric, &labels, v)?;
                    }
                }
                Ok(())
            },
        )?;
        self.family(
            &mut enc,
            "dispatcher_attempts",
            "HTTP delivery attempts, retries included",
            MetricType::Counter,
            |m, metric| counter_sample(metric, &m.labels(), m.attempts.get()),
        )?;
        self.family(
            &mut enc,
            "dispatcher_retries",
            "Delivery attempts after the first",
            MetricType::Counter,
            |m, metric| counter_sample(metric, &m.labels(), m.retries.get()),
        )?;
        self.family(
            &mut enc,
            "dispatcher_replies",
            "Reply events by outcome",
            MetricType::Counter,
            |m, metric| {
                nonzero_samples(metric, &REPLY_OUTCOMES, &m.replies, |outcome| ReplyLabels {
                    broker: m.broker.clone(),
                    trigger: m.trigger.clone(),
                    outcome,
                })
            },
        )?;
        self.family(
            &mut enc,
            "dispatcher_events_skipped",
            "Offsets a trigger never read because retention had deleted them (--retention-delete-undelivered, or the NATS/Kafka engine's own retention)",
            MetricType::Counter,
            |m, metric| match m.skipped.get() {
                0 => Ok(()),
                v => counter_sample(metric, &m.labels(), v),
            },
        )?;
        self.family(
            &mut enc,
            "dispatcher_lane_failures",
            "Events whose delivery panicked or could not be sent over HTTP (both dead-lettered), and lane restarts",
            MetricType::Counter,
            |m, metric| {
                nonzero_samples(metric, &LANE_FAILURES, &m.failures, |kind| FailureLabels {
                    broker: m.broker.clone(),
                    trigger: m.trigger.clone(),
                    kind,
                })
            },
        )?;
        self.family(
            &mut enc,
            "dispatcher_delivery_duration_seconds",
            "Time from the first attempt to the final outcome",
            MetricType::Histogram,
            |m, metric| match m.latency.get() {
                None => Ok(()),
                Some(h) => h.encode(metric.encode_family(&m.labels())?),
            },
        )?;
        self.family(
            &mut enc,
            "trigger_lag_events",
            "Events appended to the partitions this process dispatches that the trigger has not passed yet (an upper bound where offsets have gaps)",
            MetricType::Gauge,
            |m, metric| ConstGauge::new(m.lag.get()).encode(metric.encode_family(&m.labels())?),
        )
    }
}
