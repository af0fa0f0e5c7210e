//! The admin API's protection (issue 16, item 5): a bearer token from
//! `--admin-token-file`, required off loopback; browser requests (a foreign
//! `Origin`, `Sec-Fetch-Site: cross-site`, a DNS-rebinding `Host`) refused; the CLI
//! sending the token.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use triggerfish::admin_auth::AdminAuthOptions;

const TOKEN: &str = "s3cret-admin-token-0123456789";

fn config() -> String {
    common::broker_with_triggers(&[("t1", "", "http://127.0.0.1:9/".into())])
}

async fn call(
    method: reqwest::Method,
    admin: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, format!("http://{admin}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let hs = resp.headers().clone();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, hs, body)
}

async fn get(
    admin: SocketAddr,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    call(reqwest::Method::GET, admin, "/admin/v1/brokers", headers).await
}

fn write_token(dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("admin-token");
    // Written aside and renamed, as a rotated Secret appears.
    let tmp = dir.join(".admin-token.tmp");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_triggerfish"))
        .args(args)
        .env_remove("TRIGGERFISH_ADMIN_TOKEN_FILE")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_wants_its_token_and_takes_no_browser_requests() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_token(dir.path(), TOKEN);
    let mut opts = common::server_options(&config(), &dir.path().join("data"));
    // A file to reload (unchanged: the reload counts `unchanged`).
    let config_file = dir.path().join("config.yaml");
    std::fs::write(&config_file, config()).unwrap();
    opts.config_path = Some(config_file);
    opts.admin_auth = AdminAuthOptions {
        token_file: Some(token_file.clone()),
        ..Default::default()
    };
    let server = common::start_with(opts).await;
    let admin = server.admin_addr.unwrap();
    let auth = format!("Bearer {TOKEN}");

    // No token: 401 with the challenge and a JSON error.
    let (status, hs, body) = get(admin, &[]).await;
    assert_eq!(status, 401);
    assert_eq!(
        hs["www-authenticate"],
        r#"Bearer realm="triggerfish-admin""#
    );
    assert!(
        body["detail"].as_str().unwrap().contains("bearer token"),
        "{body}"
    );
    // Not the dead-letter routes either, nor unknown paths.
    let (status, _, _) = call(
        reqwest::Method::GET,
        admin,
        "/admin/dlq/default/default",
        &[],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = call(reqwest::Method::GET, admin, "/nowhere", &[]).await;
    assert_eq!(status, 401);
    // A wrong token, one of another length, another scheme.
    for bad in [
        format!("Bearer {}X", &TOKEN[..TOKEN.len() - 1]),
        format!("Bearer {TOKEN}X"),
        format!("Basic {TOKEN}"),
    ] {
        let (status, hs, _) = get(admin, &[("authorization", &bad)]).await;
        assert_eq!(status, 401, "{bad}");
        assert!(hs["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
    // The token: served. The scheme in any case.
    let (status, _, body) = get(admin, &[("authorization", &auth)]).await;
    assert_eq!(status, 200);
    assert_eq!(body["brokers"][0]["name"], "default", "{body}");
    let (status, _, _) = get(admin, &[("authorization", &format!("bearer {TOKEN}"))]).await;
    assert_eq!(status, 200);

    // A browser page of another site, even one holding the token: refused before
    // anything runs (the reload would count an outcome).
    let reloads = || async {
        let text = common::metrics_text(server.addr).await;
        text.lines()
            .filter(|l| l.starts_with("triggerfish_config_reloads_total"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    let before = reloads().await;
    for headers in [
        vec![
            ("authorization", auth.as_str()),
            ("origin", "http://evil.example"),
        ],
        vec![("authorization", auth.as_str()), ("origin", "null")],
        vec![
            ("authorization", auth.as_str()),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![
            ("authorization", auth.as_str()),
            ("sec-fetch-site", "same-site"),
        ],
    ] {
        let (status, hs, body) =
            call(reqwest::Method::POST, admin, "/admin/v1/reload", &headers).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(hs.get("www-authenticate").is_none());
    }
    assert_eq!(
        reloads().await,
        before,
        "a refused request reloaded the config"
    );
    // The same request without the browser's headers does run.
    let (status, _, body) = call(
        reqwest::Method::POST,
        admin,
        "/admin/v1/reload",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reloads().await, before + 1.0);
    // With the token, any Host is fine: a rebinding page cannot present the token.
    let (status, _, _) = get(
        admin,
        &[("authorization", &auth), ("host", "admin.example:8081")],
    )
    .await;
    assert_eq!(status, 200);

    // Refusals are counted by reason.
    let m = |reason: &'static str| {
        let addr = server.addr;
        async move {
            common::metric(
                addr,
                &format!("triggerfish_admin_refused_total{{reason=\"{reason}\"}}"),
            )
            .await
        }
    };
    // `Basic` carries no bearer token: counted as none.
    assert_eq!(m("no_token").await, 4.0);
    assert_eq!(m("bad_token").await, 2.0);
    assert_eq!(m("origin").await, 2.0);
    assert_eq!(m("cross_site").await, 2.0);

    // The CLI: without the token it says what it needs; with it, it works.
    let url = format!("http://{admin}");
    let out = cli(&["status", "--admin", &url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token-file"), "{err}");
    let tf = token_file.to_str().unwrap();
    let out = cli(&["status", "--admin", &url, "--admin-token-file", tf]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("default/default"));
    let out = cli(&["dlq", "list", "--admin", &url, "--admin-token-file", tf]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["dlq", "list", "--admin", &url]);
    assert!(!out.status.success());
    // From the environment, as `serve` reads it too.
    let out = Command::new(env!("CARGO_BIN_EXE_triggerfish"))
        .args(["status", "--admin", &url])
        .env("TRIGGERFISH_ADMIN_TOKEN_FILE", tf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Rotation: the file replaced, the old token stops working at once.
    let new = "rotated-admin-token-abcdefghijkl";
    write_token(dir.path(), new);
    let (status, _, _) = get(admin, &[("authorization", &auth)]).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(admin, &[("authorization", &format!("Bearer {new}"))]).await;
    assert_eq!(status, 200);
    // A broken replacement (too short) keeps the last good token.
    write_token(dir.path(), "short");
    let (status, _, _) = get(admin, &[("authorization", "Bearer short")]).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(admin, &[("authorization", &format!("Bearer {new}"))]).await;
    assert_eq!(status, 200);

    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_without_a_token_a_rebinding_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::server_options(&config(), &dir.path().join("data"));
    opts.admin_auth.allowed_hosts = vec!["triggerfish-admin".into(), ".svc.cluster.local".into()];
    let server = common::start_with(opts).await;
    let admin = server.admin_addr.unwrap();
    let port = admin.port();
    for (host, ok) in [
        (format!("127.0.0.1:{port}"), true),
        (format!("[::1]:{port}"), true),
        (format!("localhost:{port}"), true),
        (format!("LocalHost:{port}"), true),
        ("triggerfish-admin".to_owned(), true),
        (format!("tf.ns.svc.cluster.local:{port}"), true),
        // What a page of evil.example, rebound to 127.0.0.1, sends.
        (format!("evil.example:{port}"), false),
        (format!("localhost.evil.example:{port}"), false),
        ("svc.cluster.local".to_owned(), false),
        (format!("triggerfish-admin.evil.example:{port}"), false),
    ] {
        let (status, _, body) = get(admin, &[("host", &host)]).await;
        assert_eq!(status == 200, ok, "{host}: {status} {body}");
        if !ok {
            assert_eq!(status, 403);
            assert!(
                body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("--admin-allowed-host"),
                "{body}"
            );
        }
    }
    assert_eq!(
        common::metric(
            server.addr,
            "triggerfish_admin_refused_total{reason=\"host\"}"
        )
        .await,
        4.0
    );
    // No token is asked for on loopback when none is configured.
    let (status, _, _) = get(admin, &[]).await;
    assert_eq!(status, 200);
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_admin_api_does_not_start_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::server_options(&config(), &dir.path().join("data"));
    opts.admin_listen = Some("0.0.0.0:0".parse().unwrap());
    let err = triggerfish::app::start(opts.clone(), Default::default())
        .await
        .err()
        .expect("started off loopback without a token");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("--admin-token-file") && msg.contains("not a loopback"),
        "{msg}"
    );

    // A token too short to be one.
    let short = write_token(dir.path(), "0123456789");
    opts.admin_auth.token_file = Some(short);
    let err = triggerfish::app::start(opts.clone(), Default::default())
        .await
        .err()
        .expect("started with a 10-character token");
    assert!(format!("{err:#}").contains("at least 16"), "{err:#}");
    // A missing file.
    opts.admin_auth.token_file = Some(dir.path().join("absent"));
    let err = triggerfish::app::start(opts.clone(), Default::default())
        .await
        .err()
        .expect("started with a missing token file");
    assert!(
        format!("{err:#}").contains("cannot read --admin-token-file"),
        "{err:#}"
    );

    // With a token it serves, and asks for it.
    opts.admin_auth.token_file = Some(write_token(dir.path(), TOKEN));
    let server = common::start_with(opts).await;
    let admin = SocketAddr::from(([127, 0, 0, 1], server.admin_addr.unwrap().port()));
    let (status, _, _) = get(admin, &[]).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(admin, &[("authorization", &format!("Bearer {TOKEN}"))]).await;
    assert_eq!(status, 200);
    server.shutdown();
    server.wait().await.unwrap();
}

/// `--admin-tls-client-ca`: off loopback, client certificates stand in for the
/// token; a client without one fails its handshake; the CLI presents one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_client_certificates_stand_in_for_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::pki::Ca::new("admin CA");
    let (cert, key, _) = ca.issue("admin", &["localhost", "127.0.0.1"], false);
    let (client_cert, client_key, _) = ca.issue("operator", &[], true);
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let (cert, key, ca_file) = (
        file("tls.crt", &cert),
        file("tls.key", &key),
        file("ca.crt", &ca.pem()),
    );
    let (client_cert, client_key) = (file("op.crt", &client_cert), file("op.key", &client_key));
    let mut opts = common::server_options(&config(), &dir.path().join("data"));
    opts.admin_listen = Some("0.0.0.0:0".parse().unwrap());
    opts.admin_tls = Some(ingress::tls::TlsOptions::new(
        cert,
        key,
        Some(ca_file.clone()),
    ));
    opts.admin_auth.client_certificates = true;
    let server = common::start_with(opts).await;
    let port = server.admin_addr.unwrap().port();
    let url = format!("https://localhost:{port}/admin/v1/brokers");

    let anonymous = common::pki::https_client(&ca, None);
    assert!(
        anonymous.get(&url).send().await.is_err(),
        "a client without a certificate completes no handshake"
    );
    let other_ca = common::pki::Ca::new("other CA");
    let (oc, ok, _) = other_ca.issue("stranger", &[], true);
    let stranger = common::pki::https_client(&ca, Some((&oc, &ok)));
    assert!(
        stranger.get(&url).send().await.is_err(),
        "a certificate of another CA"
    );
    let operator = common::pki::https_client(
        &ca,
        Some((
            &std::fs::read_to_string(&client_cert).unwrap(),
            &std::fs::read_to_string(&client_key).unwrap(),
        )),
    );
    let resp = operator.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // The CLI with the certificate (and the CA as the trusted root).
    let status = |with_cert: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_triggerfish"));
        cmd.args(["status", "--admin", &format!("https://localhost:{port}")])
            .env("SSL_CERT_FILE", &ca_file)
            .env_remove("TRIGGERFISH_ADMIN_TOKEN_FILE");
        if with_cert {
            cmd.arg("--admin-client-cert")
                .arg(&client_cert)
                .arg("--admin-client-key")
                .arg(&client_key);
        }
        cmd.output().unwrap()
    };
    let out = status(true);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("default/default"),
        "{out:?}"
    );
    assert!(
        !status(false).status.success(),
        "status without its certificate"
    );
    server.shutdown();
    server.wait().await.unwrap();
}
