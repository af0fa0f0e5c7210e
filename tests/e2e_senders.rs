//! Who may send (issue 16, items 2, 3 and 6), with real cryptography and no mocks of
//! it: keys made here (ES256 and EdDSA by rcgen/ring, RS256 from a fixture made with
//! openssl), tokens signed here with jsonwebtoken, a JWKS served over HTTP here
//! through OpenID discovery; client certificates made with rcgen.
//!
//! - tokens missing, expired, not yet valid, for another audience, from an unknown
//!   issuer, with a forged signature, with a refused algorithm: 401 with
//!   `WWW-Authenticate`, each counted by reason, nothing stored;
//! - an unknown `kid` after a key rotation: accepted once the JWKS is fetched again,
//!   and those fetches bounded by `--oidc-jwks-min-refresh`;
//! - an EventPolicy admitting one service account for one broker and one event type
//!   (another type, another account: 403), the default mode for the broker without
//!   a policy, and each default authorization mode;
//! - mTLS client certificates as sender identities in policies, and Python
//!   `requests` posting over HTTPS with a client certificate and a bearer token;
//! - borrowed identities refused, an unreachable issuer (503), an issuer that wants
//!   a token for its keys, and policies changed by a reload.
//!
//! Rate limits, the audit log's bound and the flags on the binary are in
//! tests/e2e_sender_limits.rs; the keys, issuer and requests in
//! tests/common/senders.rs.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use broker::telemetry::AuthRefusal;
use common::pki::{https_client, Ca};
use common::senders::*;
use common::Subscriber;
use ingress::auth::oidc::{IssuerOptions, KeySource, OidcOptions};
use ingress::auth::AuthorizationMode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

#[tokio::test]
async fn tokens_are_checked_for_signature_issuer_time_and_audience() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let (es, ed, rsa) = (
        Signer::es256("es-1"),
        Signer::eddsa("ed-1"),
        Signer::rs256(),
    );
    let issuer = Issuer::start(&[&es, &ed, &rsa]).await;
    let mut opts = options(dir.path(), &format!("{BROKERS}{}", triggers(&sub)));
    opts.oidc = Some(issuer.options(Duration::from_secs(10)));
    opts.ingress.auth.default_mode = Some(AuthorizationMode::AllowAll);
    let running = common::start_with(opts).await;
    let base = http(running.addr);
    let c = reqwest::Client::new();
    let aud = audience("team-a", "open");
    let sa = "system:serviceaccount:team-a:producer";
    let iss = issuer.url.as_str();

    // No token: 401 with the challenge naming the audience; nothing stored.
    let a = post(&c, &base, "/team-a/open", None, "none", "t").await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.headers["www-authenticate"],
        format!("Bearer realm=\"{aud}\"").as_str()
    );
    assert_eq!(a.body["error"], "unauthenticated");
    assert_eq!(refusals(&running, AuthRefusal::missing_token), 1);

    // Each algorithm, signed here, accepted.
    for (signer, id) in [(&es, "es"), (&ed, "ed"), (&rsa, "rsa")] {
        let token = signer.sign(&claims(iss, sa, &aud));
        let a = post(&c, &base, "/team-a/open", Some(&token), id, "t").await;
        assert_eq!(a.status, 202, "{id}: {:?}", a.body);
    }

    // Refused, each for its reason, with error="invalid_token".
    let other = Signer::es256("es-1"); // same kid, another key: a forged signature
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("es-1".into());
    let hs256 = jsonwebtoken::encode(
        &hs,
        &claims(iss, sa, &aud),
        &EncodingKey::from_secret(b"a public key used as a secret"),
    )
    .unwrap();
    let mut c_expired = claims(iss, sa, &aud);
    c_expired["exp"] = json!(now() - 120);
    let mut c_future = claims(iss, sa, &aud);
    c_future["nbf"] = json!(now() + 600);
    let mut c_string_nbf = claims(iss, sa, &aud);
    c_string_nbf["nbf"] = json!((now() + 10_000_000).to_string());
    let mut c_no_sub = claims(iss, sa, &aud);
    c_no_sub.as_object_mut().unwrap().remove("sub");
    let cases: Vec<(&str, String, AuthRefusal)> = vec![
        ("expired", es.sign(&c_expired), AuthRefusal::expired),
        (
            "not yet valid",
            es.sign(&c_future),
            AuthRefusal::not_yet_valid,
        ),
        (
            "another audience",
            es.sign(&claims(iss, sa, &audience("team-a", "orders"))),
            AuthRefusal::wrong_audience,
        ),
        (
            "unknown issuer",
            es.sign(&claims("http://127.0.0.1:1", sa, &aud)),
            AuthRefusal::unknown_issuer,
        ),
        (
            "forged signature",
            other.sign(&claims(iss, sa, &aud)),
            AuthRefusal::bad_signature,
        ),
        ("HS256", hs256, AuthRefusal::algorithm),
        ("no sub", es.sign(&c_no_sub), AuthRefusal::malformed_token),
        ("not a JWT", "abc.def".into(), AuthRefusal::malformed_token),
        // nbf as a string, far ahead: refused, not taken as absent
        // (jsonwebtoken before 10.3, GHSA-h395-gr6q-cpjc).
        (
            "nbf of the wrong type",
            es.sign(&c_string_nbf),
            AuthRefusal::malformed_token,
        ),
    ];
    for (what, token, reason) in &cases {
        let before = refusals(&running, *reason);
        let a = post(&c, &base, "/team-a/open", Some(token), what, "t").await;
        assert_eq!(a.status, 401, "{what}: {:?}", a.body);
        let challenge = a.headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        assert_eq!(
            refusals(&running, *reason),
            before + 1,
            "{what} counted as {reason:?}"
        );
        assert!(
            !a.body["detail"].as_str().unwrap().contains(token.as_str()),
            "the token is never echoed"
        );
    }
    // A valid token of this broker, cached now, still works; the three accepted
    // events and only those were delivered.
    let token = es.sign(&claims(iss, sa, &aud));
    for i in 0..3 {
        let a = post(
            &c,
            &base,
            "/team-a/open",
            Some(&token),
            &format!("again-{i}"),
            "t",
        )
        .await;
        assert_eq!(a.status, 202);
    }
    // The same token, cached for team-a/open, is not one for another broker.
    let before = refusals(&running, AuthRefusal::wrong_audience);
    let a = post(&c, &base, "/team-a/orders", Some(&token), "elsewhere", "t").await;
    assert_eq!(a.status, 401);
    assert_eq!(refusals(&running, AuthRefusal::wrong_audience), before + 1);
    let got = sub
        .wait_until("6 deliveries", Duration::from_secs(10), |r| r.len() >= 6)
        .await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.header("ce-id").unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["again-0", "again-1", "again-2", "ed", "es", "rsa"]);
    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn an_unknown_kid_after_a_key_rotation_is_accepted_once_the_keys_are_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let old = Signer::es256("2026-01");
    let new = Signer::es256("2026-02");
    let issuer = Issuer::start(&[&old]).await;
    let mut opts = options(dir.path(), &format!("{BROKERS}{}", triggers(&sub)));
    opts.oidc = Some(issuer.options(Duration::ZERO));
    let running = common::start_with(opts).await;
    let base = http(running.addr);
    let c = reqwest::Client::new();
    let aud = audience("team-a", "open");
    let sa = "system:serviceaccount:team-a:producer";
    assert_eq!(issuer.fetches(), 1, "keys fetched once at start");
    let old_token = old.sign(&claims(&issuer.url, sa, &aud));
    let a = post(&c, &base, "/team-a/open", Some(&old_token), "1", "t").await;
    assert_eq!(a.status, 202);
    // Cached: the same token again.
    let a = post(&c, &base, "/team-a/open", Some(&old_token), "1b", "t").await;
    assert_eq!(a.status, 202);
    // The issuer rotates: the new key signs, the old one is gone.
    issuer.set_keys(&[&new]);
    let a = post(
        &c,
        &base,
        "/team-a/open",
        Some(&new.sign(&claims(&issuer.url, sa, &aud))),
        "2",
        "t",
    )
    .await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    assert_eq!(issuer.fetches(), 2, "one fetch for the unknown kid");
    // The old key was revoked by the rotation: its token, cached before, is checked
    // again (the keys' generation changed) and refused.
    let a = post(&c, &base, "/team-a/open", Some(&old_token), "1-again", "t").await;
    assert_eq!(a.status, 401, "a revoked key's cached token: {:?}", a.body);
    // A token of a kid nobody has: refused after one more fetch.
    let stranger = Signer::es256("made-up");
    let a = post(
        &c,
        &base,
        "/team-a/open",
        Some(&stranger.sign(&claims(&issuer.url, sa, &aud))),
        "3",
        "t",
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(
        refusals(&running, AuthRefusal::unknown_key),
        2,
        "the revoked token and the stranger"
    );
    running.shutdown();
    running.wait().await.unwrap();

    // With --oidc-jwks-min-refresh of an hour, a flood of made-up kids costs no
    // fetch at all (the start's was just now).
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), &format!("{BROKERS}{}", triggers(&sub)));
    opts.oidc = Some(issuer.options(Duration::from_secs(3600)));
    let running = common::start_with(opts).await;
    let base = http(running.addr);
    let fetched = issuer.fetches();
    for i in 0..20 {
        let s = Signer::es256(&format!("flood-{i}"));
        let a = post(
            &c,
            &base,
            "/team-a/open",
            Some(&s.sign(&claims(&issuer.url, sa, &aud))),
            "f",
            "t",
        )
        .await;
        assert_eq!(a.status, 401);
    }
    assert_eq!(
        issuer.fetches(),
        fetched,
        "no fetch within the minimum interval"
    );
    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn an_event_policy_admits_one_service_account_for_one_broker_and_one_type() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let key = Signer::es256("k");
    let issuer = Issuer::start(&[&key]).await;
    let mut opts = options(
        dir.path(),
        &format!("{BROKERS}{}{ORDERS_POLICY}", triggers(&sub)),
    );
    opts.oidc = Some(issuer.options(Duration::from_secs(10)));
    // No --default-authorization-mode: allow-same-namespace, Knative's default.
    let running = common::start_with(opts).await;
    let base = http(running.addr);
    let c = reqwest::Client::new();
    let token =
        |sa: &str, broker: &str| key.sign(&claims(&issuer.url, sa, &audience("team-a", broker)));
    let producer = "system:serviceaccount:team-a:producer";
    let intruder = "system:serviceaccount:team-a:intruder";
    let outsider = "system:serviceaccount:team-b:producer";
    let created = "com.example.order.created";

    let a = post(
        &c,
        &base,
        "/team-a/orders",
        Some(&token(producer, "orders")),
        "ok",
        created,
    )
    .await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    // The admitted sender, another type: 403, by the filter.
    let a = post(
        &c,
        &base,
        "/team-a/orders",
        Some(&token(producer, "orders")),
        "bad-type",
        "com.example.order.deleted",
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.body["error"], "forbidden");
    assert!(
        a.body["detail"]
            .as_str()
            .unwrap()
            .contains("team-a/orders-producer"),
        "{:?}",
        a.body
    );
    assert_eq!(refusals(&running, AuthRefusal::policy_filter), 1);
    // A batch with one event of another type is refused whole.
    let batch = json!([
        {"specversion": "1.0", "id": "b1", "source": "/s", "type": created},
        {"specversion": "1.0", "id": "b2", "source": "/s", "type": "com.example.other"},
    ]);
    let resp = c
        .post(format!("{base}/team-a/orders"))
        .header("content-type", "application/cloudevents-batch+json")
        .header(
            "authorization",
            format!("Bearer {}", token(producer, "orders")),
        )
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    // Another account of the same namespace: no policy admits it.
    let a = post(
        &c,
        &base,
        "/team-a/orders",
        Some(&token(intruder, "orders")),
        "intruder",
        created,
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(refusals(&running, AuthRefusal::policy_sender), 1);
    // The policy does not apply to team-a/open: the default mode admits the
    // namespace's accounts there, and not another namespace's.
    let a = post(
        &c,
        &base,
        "/team-a/open",
        Some(&token(intruder, "open")),
        "same-ns",
        "any",
    )
    .await;
    assert_eq!(a.status, 202);
    let a = post(
        &c,
        &base,
        "/team-a/open",
        Some(&token(outsider, "open")),
        "other-ns",
        "any",
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(refusals(&running, AuthRefusal::default_mode), 1);

    let got = sub
        .wait_until("2 deliveries", Duration::from_secs(10), |r| r.len() >= 2)
        .await;
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|r| (r.path.clone(), r.header("ce-id").unwrap().to_owned()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/open".into(), "same-ns".into()),
            ("/orders".into(), "ok".into())
        ]
    );
    // And nothing else arrives: the refused events were never stored. One more
    // admitted event, delivered after the others, closes the window.
    let a = post(
        &c,
        &base,
        "/team-a/orders",
        Some(&token(producer, "orders")),
        "last",
        created,
    )
    .await;
    assert_eq!(a.status, 202);
    let got = sub
        .wait_until("the last event", Duration::from_secs(10), |r| {
            r.iter().any(|x| x.header("ce-id") == Some("last"))
        })
        .await;
    assert_eq!(
        got.len(),
        3,
        "only admitted events were stored and delivered"
    );
    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn each_default_authorization_mode() {
    let key = Signer::es256("k");
    let issuer = Issuer::start(&[&key]).await;
    let same = "system:serviceaccount:team-a:someone";
    let other = "system:serviceaccount:team-b:someone";
    let c = reqwest::Client::new();
    for (mode, want_same, want_other) in [
        (Some(AuthorizationMode::AllowAll), 202, 202),
        (Some(AuthorizationMode::DenyAll), 403, 403),
        (Some(AuthorizationMode::AllowSameNamespace), 202, 403),
        (None, 202, 403),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start().await;
        let mut opts = options(dir.path(), &format!("{BROKERS}{}", triggers(&sub)));
        opts.oidc = Some(issuer.options(Duration::from_secs(10)));
        opts.ingress.auth.default_mode = mode;
        let running = common::start_with(opts).await;
        let base = http(running.addr);
        let aud = audience("team-a", "open");
        for (sa, want) in [(same, want_same), (other, want_other)] {
            let a = post(
                &c,
                &base,
                "/team-a/open",
                Some(&key.sign(&claims(&issuer.url, sa, &aud))),
                "e",
                "t",
            )
            .await;
            assert_eq!(a.status, want, "{mode:?}, {sa}: {:?}", a.body);
        }
        // A token is needed in every mode once OIDC is on.
        assert_eq!(
            post(&c, &base, "/team-a/open", None, "e", "t").await.status,
            401,
            "{mode:?}"
        );
        running.shutdown();
        running.wait().await.unwrap();
    }
}

// Multi-threaded: the Python client runs as a blocking child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_and_tokens_as_sender_identities() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let ca = Ca::new("senders CA");
    let (cert, key_pem, _) = ca.issue("ingress", &["localhost", "127.0.0.1"], false);
    let files = [
        ("tls.crt", cert),
        ("tls.key", key_pem),
        ("ca.crt", ca.pem()),
    ];
    for (name, content) in &files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let signer = Signer::es256("k");
    let issuer = Issuer::start(&[&signer]).await;
    let mut opts = options(
        dir.path(),
        &format!("{BROKERS}{}{ORDERS_POLICY}", triggers(&sub)),
    );
    opts.tls = Some(ingress::tls::TlsOptions::new(
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        Some(dir.path().join("ca.crt")),
    ));
    opts.admin_tls = opts.tls.clone().map(|t| ingress::tls::TlsOptions {
        client_ca: None,
        ..t
    });
    opts.oidc = Some(issuer.options(Duration::from_secs(10)));
    let running = common::start_with(opts).await;
    let base = format!("https://localhost:{}", running.addr.port());
    let created = "com.example.order.created";

    // A certificate with the producer's SPIFFE ID: its identity is the service
    // account, which the policy admits, with no token.
    let (spiffe_cert, spiffe_key, _) = ca.issue_with_uri(
        "producer",
        &[],
        Some("spiffe://cluster.local/ns/team-a/sa/producer"),
        true,
    );
    let c = https_client(&ca, Some((&spiffe_cert, &spiffe_key)));
    let a = post(&c, &base, "/team-a/orders", None, "by-cert", created).await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    // Another certificate of the same CA: its identity (CN) is admitted by no policy.
    let (other_cert, other_key, _) = ca.issue("someone-else", &[], true);
    let c = https_client(&ca, Some((&other_cert, &other_key)));
    let a = post(&c, &base, "/team-a/orders", None, "by-other-cert", created).await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    // The same connection with the producer's token: admitted by the token.
    let token = signer.sign(&claims(
        &issuer.url,
        "system:serviceaccount:team-a:producer",
        &audience("team-a", "orders"),
    ));
    let a = post(
        &c,
        &base,
        "/team-a/orders",
        Some(&token),
        "by-token",
        created,
    )
    .await;
    assert_eq!(a.status, 202, "{:?}", a.body);

    // Python requests over HTTPS with a client certificate and the bearer token.
    let (py_cert, py_key, _) = ca.issue("python-producer", &[], true);
    for (name, content) in [("py.crt", &py_cert), ("py.key", &py_key)] {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let run = |token: Option<&str>, id: &str| {
        common::pki::python_post(
            &format!("{base}/team-a/orders"),
            &dir.path().join("ca.crt"),
            (&dir.path().join("py.crt"), &dir.path().join("py.key")),
            id,
            created,
            token,
        )
    };
    assert_eq!(run(Some(&token), "python"), "202");
    assert_eq!(
        run(None, "python-no-token"),
        "403",
        "its certificate alone is admitted by no policy"
    );

    let got = sub
        .wait_until("3 deliveries", Duration::from_secs(10), |r| r.len() >= 3)
        .await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.header("ce-id").unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["by-cert", "by-token", "python"]);
    running.shutdown();
    running.wait().await.unwrap();
}

/// Nobody passes for a service account they are not: a certificate whose CN or URI
/// SAN reads like one, a SPIFFE ID of another trust domain, a second issuer minting
/// `system:serviceaccount:` subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_cannot_be_borrowed() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let ca = Ca::new("senders CA");
    let (cert, key_pem, _) = ca.issue("ingress", &["localhost"], false);
    for (name, content) in [
        ("tls.crt", cert),
        ("tls.key", key_pem),
        ("ca.crt", ca.pem()),
    ] {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let (cluster_key, other_key) = (Signer::es256("cluster"), Signer::es256("other"));
    let cluster = Issuer::start(&[&cluster_key]).await;
    let other = Issuer::start(&[&other_key]).await;
    let mut opts = options(
        dir.path(),
        &format!("{BROKERS}{}{ORDERS_POLICY}", triggers(&sub)),
    );
    opts.tls = Some(ingress::tls::TlsOptions::new(
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        Some(dir.path().join("ca.crt")),
    ));
    opts.admin_tls = None;
    opts.admin_listen = None;
    let mut oidc = cluster.options(Duration::from_secs(10));
    oidc.issuers
        .extend(other.options(Duration::from_secs(10)).issuers);
    opts.oidc = Some(oidc);
    let running = common::start_with(opts).await;
    let base = format!("https://localhost:{}", running.addr.port());
    let producer = "system:serviceaccount:team-a:producer";
    let created = "com.example.order.created";
    let client = |cn: &str, uri: Option<&str>| {
        let (c, k, _) = ca.issue_with_uri(cn, &[], uri, true);
        https_client(&ca, Some((&c, &k)))
    };
    // Certificates that only look like the producer's.
    for (what, c) in [
        ("a CN", client(producer, None)),
        ("a URI SAN", client("x", Some(producer))),
        (
            "another trust domain",
            client("x", Some("spiffe://other.example/ns/team-a/sa/producer")),
        ),
    ] {
        let a = post(&c, &base, "/team-a/orders", None, "borrowed", created).await;
        assert_eq!(a.status, 403, "{what}: {:?}", a.body);
        // Nor do they count as the namespace's accounts.
        let a = post(&c, &base, "/team-a/open", None, "borrowed", "t").await;
        assert_eq!(a.status, 403, "{what} on open: {:?}", a.body);
    }
    // The genuine SPIFFE ID is the producer.
    let genuine = client("x", Some("spiffe://cluster.local/ns/team-a/sa/producer"));
    let a = post(&genuine, &base, "/team-a/orders", None, "spiffe", created).await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    // The second issuer's subjects are qualified by it: its "producer" is not the
    // cluster's.
    let neutral = client("neutral", None);
    let aud = audience("team-a", "orders");
    let forged = other_key.sign(&claims(&other.url, producer, &aud));
    let a = post(
        &neutral,
        &base,
        "/team-a/orders",
        Some(&forged),
        "other-issuer",
        created,
    )
    .await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    let real = cluster_key.sign(&claims(&cluster.url, producer, &aud));
    let a = post(
        &neutral,
        &base,
        "/team-a/orders",
        Some(&real),
        "cluster-issuer",
        created,
    )
    .await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    let got = sub
        .wait_until("2 deliveries", Duration::from_secs(10), |r| r.len() >= 2)
        .await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.header("ce-id").unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["cluster-issuer", "spiffe"]);
    running.shutdown();
    running.wait().await.unwrap();
}

/// An issuer that cannot be reached is not the producer's fault: 503 with
/// `Retry-After`, not 401.
#[tokio::test]
async fn an_unreachable_issuer_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut opts = options(dir.path(), &format!("{BROKERS}{}", triggers(&sub)));
    opts.oidc = Some(OidcOptions {
        issuers: vec![IssuerOptions {
            issuer: url.clone(),
            keys: KeySource::Discovery,
        }],
        ..OidcOptions::default()
    });
    let running = common::start_with(opts).await;
    let key = Signer::es256("k");
    let token = key.sign(&claims(
        &url,
        "system:serviceaccount:team-a:p",
        &audience("team-a", "open"),
    ));
    let c = reqwest::Client::new();
    let a = post(
        &c,
        &http(running.addr),
        "/team-a/open",
        Some(&token),
        "e",
        "t",
    )
    .await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert_eq!(a.headers["retry-after"], "1");
    assert_eq!(refusals(&running, AuthRefusal::keys_unavailable), 1);
    running.shutdown();
    running.wait().await.unwrap();
}

/// EventPolicies are reloaded with the config: a policy added to a running server
/// holds for the next request, an invalid one changes nothing.
#[tokio::test]
async fn event_policies_change_with_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let key = Signer::es256("k");
    let issuer = Issuer::start(&[&key]).await;
    let file = dir.path().join("config.yaml");
    let without = format!("{BROKERS}{}", triggers(&sub));
    std::fs::write(&file, &without).unwrap();
    let mut opts = options(dir.path(), &without);
    opts.config_path = Some(file.clone());
    opts.oidc = Some(issuer.options(Duration::from_secs(10)));
    let running = common::start_with(opts).await;
    let base = http(running.addr);
    let c = reqwest::Client::new();
    let aud = audience("team-a", "orders");
    let intruder = key.sign(&claims(
        &issuer.url,
        "system:serviceaccount:team-a:intruder",
        &aud,
    ));
    let producer = key.sign(&claims(
        &issuer.url,
        "system:serviceaccount:team-a:producer",
        &aud,
    ));
    let created = "com.example.order.created";
    // No policy: the namespace's accounts are admitted (allow-same-namespace).
    assert_eq!(
        post(&c, &base, "/team-a/orders", Some(&intruder), "1", created)
            .await
            .status,
        202
    );

    std::fs::write(&file, format!("{without}{ORDERS_POLICY}")).unwrap();
    let status = running.reloader.reload("test").await;
    assert!(
        status
            .changes
            .iter()
            .any(|c| c == "event policy added: team-a/orders-producer"),
        "{:?}",
        status.changes
    );
    assert_eq!(
        post(&c, &base, "/team-a/orders", Some(&intruder), "2", created)
            .await
            .status,
        403
    );
    assert_eq!(
        post(&c, &base, "/team-a/orders", Some(&producer), "3", created)
            .await
            .status,
        202
    );
    // Status shows it, as Knative's Broker status.policies.
    let admin = running.admin_addr.unwrap();
    let v: Value = c
        .get(format!("http://{admin}/admin/v1/brokers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let orders = v["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "orders")
        .unwrap();
    assert_eq!(orders["policies"][0]["name"], "orders-producer", "{orders}");
    assert_eq!(
        orders["address"]["audience"],
        "eventing.knative.dev/broker/team-a/orders"
    );
    assert!(orders["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "EventPoliciesReady" && c["reason"] == "EventPoliciesReady"));

    // An invalid policy (no senders) is refused whole; the previous one holds.
    std::fs::write(
        &file,
        format!("{without}{}", ORDERS_POLICY.replace("  from:\n  - ref: {apiVersion: v1, kind: ServiceAccount, name: producer, namespace: team-a}\n", "")),
    )
    .unwrap();
    let status = running.reloader.reload("test").await;
    assert_eq!(
        status.outcome,
        broker::telemetry::ReloadOutcome::invalid,
        "{status:?}"
    );
    assert_eq!(
        post(&c, &base, "/team-a/orders", Some(&intruder), "4", created)
            .await
            .status,
        403
    );

    // Removed: the default mode again.
    std::fs::write(&file, &without).unwrap();
    let status = running.reloader.reload("test").await;
    assert!(
        status
            .changes
            .iter()
            .any(|c| c == "event policy removed: team-a/orders-producer"),
        "{:?}",
        status.changes
    );
    assert_eq!(
        post(&c, &base, "/team-a/orders", Some(&intruder), "5", created)
            .await
            .status,
        202
    );
    running.shutdown();
    running.wait().await.unwrap();
}

/// An issuer that serves its keys to authenticated callers only (a Kubernetes API
/// server's default): `--oidc-fetch-token-file` makes the fetch carry a token.
#[tokio::test]
async fn keys_of_an_issuer_that_wants_a_token() {
    let key = Signer::es256("k");
    let issuer = Issuer::start(&[&key]).await;
    *issuer.required.lock().unwrap() = Some("pod-token".into());
    let c = reqwest::Client::new();
    let aud = audience("team-a", "open");
    let token = key.sign(&claims(&issuer.url, "system:serviceaccount:team-a:p", &aud));
    for (with_token, want) in [(false, 503), (true, 202)] {
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start().await;
        let mut opts = options(dir.path(), &format!("{BROKERS}{}", triggers(&sub)));
        let mut oidc = issuer.options(Duration::from_secs(10));
        if with_token {
            let file = dir.path().join("token");
            std::fs::write(&file, "pod-token\n").unwrap();
            oidc.fetch_token_file = Some(file);
        }
        opts.oidc = Some(oidc);
        let running = common::start_with(opts).await;
        let a = post(
            &c,
            &http(running.addr),
            "/team-a/open",
            Some(&token),
            "e",
            "t",
        )
        .await;
        assert_eq!(a.status, want, "fetch token {with_token}: {:?}", a.body);
        running.shutdown();
        running.wait().await.unwrap();
    }
}
