//! The Kafka channel over TLS, configured only through pass-through librdkafka settings
//! (`security.protocol=SSL`, `ssl.ca.location=...`).
//!
//! tansu 0.6 serves plaintext only, so the test puts a TLS-terminating proxy (rustls,
//! a certificate made with the `openssl` command for this run) in front of a tansu of
//! its own, which advertises the proxy's address: every connection the Kafka clients
//! make, bootstrap and broker, is TLS. Needs `TRIGGERFISH_TEST_TANSU_BIN` (written by
//! `scripts/dev-services start`); fails without it unless `TRIGGERFISH_SKIP_KAFKA=1`.

#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::channel::kafka::{KafkaLog, KafkaOptions};
use broker::channel::{EventLog, StartAt};
use broker::config::BrokerId;
use broker::event::{DataKind, Event};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

/// The tansu process; killed when dropped.
struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A self-signed certificate for localhost / 127.0.0.1, made with `openssl`.
fn make_cert(dir: &Path) {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req failed");
}

/// Accepts TLS on `listener` and forwards the plaintext to `upstream`.
async fn tls_proxy(listener: TcpListener, upstream: SocketAddr, dir: &Path) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // a client that does not trust the certificate
                };
                let Ok(mut plain) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
}

fn event(id: &str) -> Event {
    let mut e = Event::new();
    for (k, v) in [
        ("specversion", "1.0"),
        ("id", id),
        ("source", "/tls"),
        ("type", "t"),
    ] {
        e.set_str(k, v);
    }
    e.set_data(
        DataKind::Binary,
        Some(bytes::Bytes::from(format!("data-{id}"))),
    );
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_channel_works_over_tls_set_up_by_client_options_alone() {
    let Some(bin) = common::tansu_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    make_cert(dir.path());
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = proxy.local_addr().unwrap();
    let plain_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _tansu = Tansu(
        Command::new(bin)
            .current_dir(dir.path())
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .args([
                "broker",
                "--cluster-id",
                "tls-test",
                "--storage-engine",
                "memory://tansu/",
            ])
            .arg("--listener-url")
            .arg(format!("tcp://{plain_addr}"))
            // Clients learn the proxy's address from the metadata: all of their
            // connections go through TLS.
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{tls_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(plain_addr).await.is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tls_proxy(proxy, plain_addr, dir.path()).await;

    let ca = dir.path().join("cert.pem");
    let options = |trust: bool| {
        let mut o = KafkaOptions::from_url(&format!("kafka://{tls_addr}")).unwrap();
        o.partitions = 2;
        o.request_timeout = Duration::from_secs(5);
        o.add_option("security.protocol=SSL").unwrap();
        o.add_option("batch.num.messages=1").unwrap();
        if trust {
            o.add_option(&format!("ssl.ca.location={}", ca.display()))
                .unwrap();
        }
        o
    };

    // Without the CA, the certificate is not trusted: no connection, a clear error.
    match KafkaLog::connect(options(false)).await {
        Ok(_) => panic!("connected although the certificate is not trusted"),
        Err(e) => eprintln!("without the CA: {e}"),
    }

    // With it: topics, appends, reads and checkpoints all over TLS.
    let log = KafkaLog::connect(options(true)).await.unwrap();
    let b = log
        .open(
            &BrokerId::new("default", "tls"),
            broker::channel::LogKind::Events,
        )
        .await
        .unwrap();
    let events: Vec<Event> = (0..10).map(|i| event(&format!("e{i}"))).collect();
    b.append(&events).await.unwrap();
    let mut got = Vec::new();
    for p in 0..b.partitions() {
        let end = b.end_offset(p).await.unwrap();
        let mut r = b.reader(p, StartAt::Earliest).await.unwrap();
        while r.position() < end {
            let batch = tokio::time::timeout(Duration::from_secs(20), r.next_batch(100))
                .await
                .expect("records within 20 s")
                .unwrap();
            got.extend(batch.into_iter().map(|r| r.event.unwrap().id().to_owned()));
        }
    }
    got.sort();
    let mut want: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
    want.sort();
    assert_eq!(got, want);
    b.store_checkpoint(
        "t",
        &[broker::channel::CheckpointUpdate::unleased(0, 3)],
        true,
    )
    .await
    .unwrap();
    assert_eq!(b.load_checkpoint("t").await.unwrap(), vec![Some(3), None]);
}
