//! TLS on the ingress and admin listeners (issue 16, item 1), with real
//! cryptography: a CA, server and client certificates made here with rcgen, rustls
//! clients. An event posted over HTTPS is stored and delivered; plain HTTP to the
//! TLS port fails its handshake; certificate files replaced while running are served
//! to new handshakes while a connection opened before keeps working; a broken
//! replacement keeps the previous pair; under mTLS a client without a certificate or
//! with one of another CA is refused, and Python requests with a trusted one gets its
//! 202; bad files stop the server from starting with the flag named.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::pki::{https_client, Ca};
use common::Subscriber;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use triggerfish::app::ServerOptions;

/// Writes a file aside and renames it over `path`, as a renewal appears.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn write_server_files(dir: &Path, ca: &Ca, cn: &str) -> (Files, Vec<u8>) {
    let (cert, key, der) = ca.issue(cn, &["localhost", "127.0.0.1"], false);
    let files = Files {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        ca: dir.join("ca.crt"),
    };
    replace(&files.cert, &cert);
    replace(&files.key, &key);
    replace(&files.ca, &ca.pem());
    (files, der)
}

fn options(
    dir: &Path,
    sub: &Subscriber,
    files: &Files,
    client_ca: Option<PathBuf>,
) -> ServerOptions {
    let yaml = common::broker_with_triggers(&[("all", "", sub.url("/all"))]);
    let mut opts = common::server_options(&yaml, &dir.join("data"));
    let tls = ingress::tls::TlsOptions::new(files.cert.clone(), files.key.clone(), client_ca);
    opts.tls = Some(tls.clone());
    opts.admin_tls = Some(ingress::tls::TlsOptions {
        client_ca: None,
        ..tls
    });
    opts
}

async fn post_event(client: &reqwest::Client, addr: SocketAddr, id: &str) -> reqwest::Result<u16> {
    let mut req = client
        .post(format!("https://localhost:{}/default/default", addr.port()))
        .body("{}")
        .header("content-type", "application/json");
    for (k, v) in common::binary_headers(id, "tls.test") {
        req = req.header(k, v);
    }
    Ok(req.send().await?.status().as_u16())
}

/// A raw TLS connection (trusting `ca`): the certificate the server presented.
async fn connect(
    addr: SocketAddr,
    ca: &Ca,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert.der().to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, presented)
}

/// One HTTP/1.1 request on an open connection (kept alive): the status.
async fn request_on(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    id: &str,
) -> u16 {
    let req = format!(
        "POST /default/default HTTP/1.1\r\nhost: localhost\r\nce-specversion: 1.0\r\nce-id: {id}\r\nce-source: /tests\r\nce-type: tls.test\r\ncontent-length: 0\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

async fn tls_metric(addr: SocketAddr, series: &str) -> f64 {
    // The metrics endpoint is on the ingress listener: over TLS too.
    let text = reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{}/metrics", addr.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_ingress_and_admin_with_certificates_replaced_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let ca = Ca::new("test CA");
    let (files, first_der) = write_server_files(dir.path(), &ca, "server-1");
    let server = common::start_with(options(dir.path(), &sub, &files, None)).await;
    let addr = server.addr;
    let client = https_client(&ca, None);

    // A 202 over HTTPS, and the event delivered.
    assert_eq!(post_event(&client, addr, "e1").await.unwrap(), 202);
    // Plain HTTP to the TLS port: no answer, a failed handshake counted.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    common::eventually(
        "the failed handshake counted",
        Duration::from_secs(5),
        || async {
            tls_metric(
                addr,
                "triggerfish_ingress_connections_closed_total{reason=\"tls_handshake\"}",
            )
            .await
                >= 1.0
        },
    )
    .await;

    // A connection opened now sees the first certificate and stays open.
    let (mut old_conn, presented) = connect(addr, &ca).await;
    assert_eq!(presented, first_der);
    assert_eq!(request_on(&mut old_conn, "e2").await, 202);

    // Renewed: new handshakes get the new certificate, the open connection goes on.
    let (cert, key, second_der) = ca.issue("server-2", &["localhost", "127.0.0.1"], false);
    replace(&files.key, &key);
    replace(&files.cert, &cert);
    common::eventually(
        "the new certificate served",
        Duration::from_secs(10),
        || {
            let ca = &ca;
            let second = second_der.clone();
            async move { connect(addr, ca).await.1 == second }
        },
    )
    .await;
    assert_eq!(
        tls_metric(addr, "triggerfish_tls_reloads_total{outcome=\"applied\"}").await,
        // The ingress's and the admin listener's copies of the same files.
        2.0
    );
    assert_eq!(request_on(&mut old_conn, "e3").await, 202);
    assert_eq!(post_event(&client, addr, "e4").await.unwrap(), 202);

    // A broken renewal (a key of another certificate): the second pair stays.
    let (_, other_key, _) = ca.issue("server-3", &["localhost"], false);
    replace(&files.key, &other_key);
    common::eventually(
        "the broken pair refused",
        Duration::from_secs(10),
        || async {
            tls_metric(addr, "triggerfish_tls_reloads_total{outcome=\"invalid\"}").await >= 1.0
        },
    )
    .await;
    assert_eq!(connect(addr, &ca).await.1, second_der);
    assert_eq!(post_event(&client, addr, "e5").await.unwrap(), 202);

    sub.wait_until(
        "every event accepted delivered",
        Duration::from_secs(10),
        |r| {
            let ids: std::collections::HashSet<_> =
                r.iter().filter_map(|r| r.header("ce-id")).collect();
            ["e1", "e2", "e3", "e4", "e5"]
                .iter()
                .all(|id| ids.contains(id))
        },
    )
    .await;

    // The admin API over TLS too, and brokers addressed with https.
    let admin = server.admin_addr.unwrap();
    let url = format!("https://localhost:{}", admin.port());
    let v: serde_json::Value = client
        .get(format!("{url}/admin/v1/brokers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let address = v["brokers"][0]["address"]["url"].as_str().unwrap();
    assert!(address.starts_with("https://"), "{v}");
    // `triggerfish status` over HTTPS, trusting the CA through SSL_CERT_FILE.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triggerfish"))
        .args(["status", "--admin", &url])
        .env("SSL_CERT_FILE", &files.ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("default/default"));

    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mtls_a_client_needs_a_certificate_of_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let ca = Ca::new("server and client CA");
    let (files, _) = write_server_files(dir.path(), &ca, "server");
    let server =
        common::start_with(options(dir.path(), &sub, &files, Some(files.ca.clone()))).await;
    let addr = server.addr;

    let (cert, key, _) = ca.issue("system:serviceaccount:default:producer", &[], true);
    let trusted = https_client(&ca, Some((&cert, &key)));
    assert_eq!(post_event(&trusted, addr, "m1").await.unwrap(), 202);

    // No certificate at all.
    let anonymous = https_client(&ca, None);
    assert!(post_event(&anonymous, addr, "m2").await.is_err());
    // A certificate of another CA.
    let other = Ca::new("another CA");
    let (cert, key, _) = other.issue("intruder", &[], true);
    let untrusted = https_client(&ca, Some((&cert, &key)));
    assert!(post_event(&untrusted, addr, "m3").await.is_err());

    // A client that is not ours: Python requests with the client certificate
    // (`scripts/dev-services` installs requests from PyPI).
    let client_cert = dir.path().join("client.crt");
    let client_key = dir.path().join("client.key");
    let (cert, key, _) = ca.issue("python-producer", &[], true);
    replace(&client_cert, &cert);
    replace(&client_key, &key);
    let status = common::pki::python_post(
        &format!("https://localhost:{}/default/default", addr.port()),
        &files.ca,
        (&client_cert, &client_key),
        "py1",
        "tls.test",
        None,
    );
    assert_eq!(status, "202");

    sub.wait_until(
        "the trusted clients' events",
        Duration::from_secs(10),
        |r| {
            ["m1", "py1"]
                .iter()
                .all(|id| r.iter().any(|r| r.header("ce-id") == Some(*id)))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<_> = sub
        .received()
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_owned))
        .collect();
    ids.sort();
    assert_eq!(ids, ["m1", "py1"]);
    // The admin listener does not ask for client certificates.
    let admin = server.admin_addr.unwrap();
    let status = anonymous
        .get(format!(
            "https://localhost:{}/admin/v1/brokers",
            admin.port()
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_do_not_load_stop_the_start_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let ca = Ca::new("test CA");
    let (files, _) = write_server_files(dir.path(), &ca, "server");
    let start = |opts: ServerOptions| async move {
        format!(
            "{:#}",
            triggerfish::app::start(opts, Default::default())
                .await
                .err()
                .expect("started with bad TLS files")
        )
    };
    // A key that is not the certificate's.
    let (_, other_key, _) = ca.issue("other", &["localhost"], false);
    let mismatched = dir.path().join("other.key");
    replace(&mismatched, &other_key);
    let mut opts = options(dir.path(), &sub, &files, None);
    opts.tls.as_mut().unwrap().key = mismatched;
    let e = start(opts).await;
    assert!(e.contains("--tls-cert") && e.contains("--tls-key"), "{e}");
    // A certificate file that is missing, or holds no certificate.
    let mut opts = options(dir.path(), &sub, &files, None);
    opts.tls.as_mut().unwrap().cert = dir.path().join("absent.crt");
    assert!(start(opts).await.contains("--tls-cert"));
    let mut opts = options(dir.path(), &sub, &files, None);
    opts.tls.as_mut().unwrap().cert = files.key.clone();
    let e = start(opts).await;
    assert!(
        e.contains("--tls-cert") && e.contains("no PEM certificate"),
        "{e}"
    );
    // A client CA file without a certificate.
    let e = start(options(dir.path(), &sub, &files, Some(files.key.clone()))).await;
    assert!(e.contains("--tls-client-ca"), "{e}");
}
