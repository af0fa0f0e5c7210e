//! A trigger as the dispatcher runs it, and where its replies and dead letters go:
//! the state [`crate::lane`] and [`crate::settle`] share (a leaf module, so that
//! neither imports the other's).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use broker::channel::{BrokerLog, ChannelError};
use broker::config::TriggerConfig;
use broker::event::{Event, EventLimits};
use broker::telemetry::TriggerMetrics;
use tokio_util::sync::CancellationToken;

/// One incarnation of a trigger as the dispatcher runs it (a config change makes
/// a new one, [`crate::roster`]).
pub struct TriggerRuntime {
    /// Its config.
    pub cfg: Arc<TriggerConfig>,
    /// What its readers need (filter, incarnation, budget account).
    pub lane: Arc<crate::fanout::LaneInfo>,
    /// Its metrics.
    pub metrics: TriggerMetrics,
    /// Where its replies and dead letters go.
    pub sinks: Arc<BrokerSinks>,
    /// Its delivery health (shared by its incarnations).
    pub health: Arc<Health>,
    /// The clients its subscriber and dead-letter sink are called with (their
    /// `CACerts` trusted, [`crate::trust`]).
    pub clients: crate::trust::TriggerClients,
}

/// The last delivery that failed for good, for status.
#[derive(Debug, Clone)]
pub struct DeliveryError {
    /// When.
    pub at: SystemTime,
    /// The subscriber's status code; `None` for a transport error or timeout.
    pub status: Option<u16>,
    /// What happened.
    pub message: String,
}

/// What status shows of a trigger's deliveries beyond its counters.
#[derive(Debug, Default)]
pub struct Health {
    last_error: Mutex<Option<DeliveryError>>,
}

impl Health {
    /// Records a delivery that failed for good.
    pub fn failed(&self, status: Option<u16>, message: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(DeliveryError {
            at: SystemTime::now(),
            status,
            message,
        });
    }

    /// The last delivery that failed for good.
    pub fn last_error(&self) -> Option<DeliveryError> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A test-only fault: called with each event just before its delivery. A hook that
/// panics stands for a bug in encoding or delivery (`tests/e2e_poison.rs`).
#[derive(Clone)]
pub struct FaultHook(pub Arc<dyn Fn(&Event) + Send + Sync>);

impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultHook")
    }
}

/// Where a broker's replies and dead letters go.
pub struct BrokerSinks {
    /// The broker's event log (replies are appended here).
    pub events: Arc<dyn BrokerLog>,
    /// The broker's own dead-letter log.
    pub dead_letters: Arc<dyn BrokerLog>,
    /// `knativebrokerttl` of events that carry none.
    pub max_ttl: i32,
    /// Abandons the dead-letter log retry loop.
    pub shutdown: CancellationToken,
    /// See [`FaultHook`]; `None` outside tests.
    pub fault: Option<FaultHook>,
    /// Replies are held to the ingress's attribute limits.
    pub limits: EventLimits,
    /// The largest reply body read (the ingress's `--max-body-bytes`).
    pub max_reply_bytes: usize,
    /// Response bodies are charged here while they are read.
    pub budget: Arc<broker::budget::MemoryBudget>,
}

/// Shutdown came before something could be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

/// Why [`append_until_stored`] gave up.
pub(crate) enum Unstored {
    /// The event can never be stored (larger than the channel accepts).
    Never(ChannelError),
    /// Shutdown began first.
    Abandoned,
}

/// Appends `event` (a reply or dead letter) to `log`, retrying transient failures
/// (full, unavailable, I/O) with a backoff of 50 ms doubling to 5 s until it is
/// stored, so that nothing is dropped while the channel recovers. Gives up when the
/// event can never be stored (larger than the channel accepts), or when `shutdown`
/// begins meanwhile: then the event is not done and is delivered again after a
/// restart.
pub(crate) async fn append_until_stored(
    log: &dyn BrokerLog,
    event: &Event,
    trigger: &str,
    what: &str,
    shutdown: &CancellationToken,
) -> Result<(), Unstored> {
    let mut wait = Duration::from_millis(50);
    loop {
        match log.append_own(std::slice::from_ref(event)).await {
            Ok(()) => return Ok(()),
            Err(e @ ChannelError::TooLarge { .. }) => return Err(Unstored::Never(e)),
            Err(e) => {
                tracing::error!(broker = %log.broker(), trigger, event_id = event.id(), error = %e,
                    "cannot store a {what}; retrying (the trigger's checkpoint waits for it)");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(Unstored::Abandoned),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}
