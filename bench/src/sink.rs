//! The null subscriber, which is also the bare baseline server: a plain hyper HTTP/1.1
//! server that reads each request body, counts the request and answers 202 with an
//! empty body. While recording, it turns each request's `ce-benchsent` due time into
//! an end-to-end latency sample.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::load::SENT_HEADER;

/// What the sink has seen.
#[derive(Debug)]
pub struct Sink {
    received: AtomicU64,
    connections: AtomicU64,
    recording: AtomicBool,
    latencies_us: Mutex<Vec<u32>>,
    epoch: Instant,
}

impl Sink {
    /// A sink whose latencies are measured from `epoch`.
    pub fn new(epoch: Instant) -> Arc<Sink> {
        Arc::new(Sink {
            received: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            recording: AtomicBool::new(false),
            latencies_us: Mutex::new(Vec::new()),
            epoch,
        })
    }

    /// Requests received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Starts or stops recording latencies.
    pub fn record(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    /// Takes the recorded latencies (µs).
    pub fn take_latencies(&self) -> Vec<u32> {
        match self.latencies_us.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }

    fn on_request(&self, req: &Request<Incoming>) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let sent = req
            .headers()
            .get(SENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(sent_ns) = sent {
            let now_ns = self.epoch.elapsed().as_nanos() as u64;
            let us = now_ns.saturating_sub(sent_ns) / 1000;
            if let Ok(mut v) = self.latencies_us.lock() {
                v.push(us.min(u64::from(u32::MAX)) as u32);
            }
        }
    }
}

/// Serves `sink` on `listener` until `stop` fires.
pub async fn serve(listener: TcpListener, sink: Arc<Sink>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        sink.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let sink = sink.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let sink = sink.clone();
                async move {
                    sink.on_request(&req);
                    // Read the whole body, as any real receiver must.
                    let _ = req.into_body().collect().await;
                    let mut resp = Response::new(Empty::<Bytes>::new());
                    *resp.status_mut() = StatusCode::ACCEPTED;
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
