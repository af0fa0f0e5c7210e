//! The conformance suite on NATS JetStream (needs a nats-server with JetStream:
//! `scripts/test` starts one, or `scripts/dev-services start` and `source
//! .dev-services/env`).

use super::*;
use broker::channel::nats::{NatsLog, NatsOptions};
use broker::channel::LogKind;

/// A prefix no other run or test uses on the same server.
pub fn unique_prefix(tag: &str) -> String {
    crate::common::procs::unique(tag)
}

pub fn options(url: &str, prefix: &str, partitions: u32) -> NatsOptions {
    let mut opts = NatsOptions::from_url(url).unwrap();
    opts.prefix = prefix.to_owned();
    opts.partitions = partitions;
    // Keep file-store reservations small on the test server.
    opts.limits.max_bytes = Some(64 << 20);
    opts
}

/// Fresh logs get a new prefix (so new streams and checkpoint bucket); reopen
/// connects again with the same prefix.
pub struct Nats {
    url: String,
    partitions: u32,
    prefix: String,
}

impl Nats {
    pub fn new(url: String, partitions: u32) -> Nats {
        Nats {
            url,
            partitions,
            prefix: unique_prefix("cf"),
        }
    }

    pub async fn connect(&self) -> NatsLog {
        NatsLog::connect(options(&self.url, &self.prefix, self.partitions))
            .await
            .unwrap()
    }
}

impl Backend for Nats {
    fn fresh(&mut self) -> Arc<dyn EventLog> {
        self.prefix = unique_prefix("cf");
        self.reopen()
    }
    fn reopen(&mut self) -> Arc<dyn EventLog> {
        let log = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(self.connect())
        });
        Arc::new(log)
    }
}

/// A producer's retry (same `source` + `id`) is stored once; a new id is not.
pub async fn producer_retries_are_deduplicated(b: &mut dyn Backend) {
    let log = b
        .fresh()
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let e = event("dup", Some("k"));
    log.append(std::slice::from_ref(&e)).await.unwrap();
    let mut retry = e.clone();
    retry.set_str("knativearrivaltime", "2030-01-01T00:00:00Z");
    assert_eq!(log.take_deduplicated(), 0);
    log.append(&[retry]).await.unwrap();
    assert_eq!(
        log.take_deduplicated(),
        1,
        "the retry is counted as a duplicate"
    );
    assert_eq!(log.take_deduplicated(), 0, "once");
    log.append(&[event("dup2", Some("k"))]).await.unwrap();
    let got = read_all(log.as_ref(), StartAt::Earliest).await;
    let ids: Vec<&str> = got.iter().map(|(_, _, e)| e.id()).collect();
    assert_eq!(ids, ["dup", "dup2"]);
    assert_eq!(got[0].2, e, "the first copy is kept");
}

/// The dead-letter stream is created without age or size limits (the events stream
/// keeps `--nats-max-age`/`--nats-max-bytes`): dead letters wait for a redrive.
pub async fn dead_letters_never_expire(b: &mut Nats) {
    let log = b.fresh();
    log.open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    log.open(&broker(), broker::channel::LogKind::DeadLetters)
        .await
        .unwrap();
    let client = broker::channel::nats::async_nats::connect(b.url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let js = broker::channel::nats::async_nats::jetstream::new(client);
    let config = |kind: LogKind| {
        let js = js.clone();
        let prefix = b.prefix.clone();
        async move {
            let (name, _) = broker::channel::nats::stream_names(&prefix, &broker(), kind).unwrap();
            js.get_stream(name)
                .await
                .unwrap()
                .cached_info()
                .config
                .clone()
        }
    };
    let dead = config(LogKind::DeadLetters).await;
    assert_eq!(dead.max_age, Duration::ZERO, "no age limit");
    assert_eq!(dead.max_bytes, -1, "no size limit");
    let events = config(LogKind::Events).await;
    assert!(events.max_age > Duration::ZERO, "{:?}", events.max_age);
    assert!(events.max_bytes > 0);
}

/// Two connections with the same prefix, asking for 3 and 8 partitions.
pub async fn two_processes(url: &str) -> (NatsLog, NatsLog) {
    let prefix = unique_prefix("share");
    let first = NatsLog::connect(options(url, &prefix, 3)).await.unwrap();
    let second = NatsLog::connect(options(url, &prefix, 8)).await.unwrap();
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_second_process_shares_the_broker() {
    let Some(url) = common::nats_url() else {
        return;
    };
    let (first, second) = two_processes(&url).await;
    a_second_process_shares_the_broker(&first, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_reader_behind_the_stream_start_reports_what_it_skipped() {
    let Some(url) = common::nats_url() else {
        return;
    };
    let mut opts = options(&url, &unique_prefix("skip"), 1);
    opts.limits.max_bytes = Some(16 << 10);
    let log = NatsLog::connect(opts).await.unwrap();
    let b = log
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    for i in 0..200 {
        b.append(&[event(&format!("big{i}"), None)]).await.unwrap();
    }
    a_reader_behind_the_log_start_reports_what_it_skipped(b.as_ref(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_leases_hand_over_explicitly() {
    let Some(url) = common::nats_url() else {
        return;
    };
    let prefix = unique_prefix("handover");
    let first = NatsLog::connect(options(&url, &prefix, 4)).await.unwrap();
    let second = NatsLog::connect(options(&url, &prefix, 4)).await.unwrap();
    let (a, b) = (
        first
            .open(&broker(), broker::channel::LogKind::Events)
            .await
            .unwrap(),
        second
            .open(&broker(), broker::channel::LogKind::Events)
            .await
            .unwrap(),
    );
    leases_hand_over_explicitly(a.as_ref(), b.as_ref()).await;
}
