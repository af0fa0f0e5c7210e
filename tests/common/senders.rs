//! Pieces of the sender tests (tests/e2e_senders.rs, tests/e2e_sender_limits.rs):
//! signing keys made here (ES256 and EdDSA by rcgen, RS256 from the fixture made
//! with openssl) with their JWKs, an OpenID issuer served over HTTP whose keys can
//! be replaced and whose fetches are counted, the brokers and policy the tests
//! share, and a producer's POST.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use broker::telemetry::AuthRefusal;
use ingress::auth::oidc::{IssuerOptions, KeySource, OidcOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use triggerfish::app::{Running, ServerOptions};

use super::Subscriber;

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key with its public JWK.
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    pub key: EncodingKey,
    pub jwk: Value,
}

impl Signer {
    pub fn es256(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
        Signer {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
        }
    }

    pub fn eddsa(kid: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Signer {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(&kp.serialize_der()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA",
                        "x": b64(kp.public_key_raw())}),
        }
    }

    /// The fixture key (tests/fixtures/oidc-test-rsa.*, made with `openssl genrsa`).
    pub fn rs256() -> Signer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let der = std::fs::read(dir.join("oidc-test-rsa.der")).unwrap();
        let jwk: Value =
            serde_json::from_slice(&std::fs::read(dir.join("oidc-test-rsa.jwk.json")).unwrap())
                .unwrap();
        Signer {
            kid: jwk["kid"].as_str().unwrap().into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_der(&der),
            jwk,
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn audience(ns: &str, broker: &str) -> String {
    format!("eventing.knative.dev/broker/{ns}/{broker}")
}

/// Claims of a service account's token for a broker, valid for an hour.
pub fn claims(iss: &str, sa: &str, aud: &str) -> Value {
    json!({"iss": iss, "sub": sa, "aud": aud, "iat": now(), "exp": now() + 3600})
}

/// An OpenID issuer served over HTTP: discovery document and JWKS, the keys
/// replaceable and their fetches counted.
pub struct Issuer {
    pub url: String,
    pub keys: Arc<Mutex<Value>>,
    pub fetches: Arc<AtomicUsize>,
    /// When set, the keys are served only with `Authorization: Bearer <this>`
    /// (as a Kubernetes API server serves its issuer's).
    pub required: Arc<Mutex<Option<String>>>,
}

#[derive(Clone)]
pub struct IssuerState {
    pub url: String,
    pub keys: Arc<Mutex<Value>>,
    pub fetches: Arc<AtomicUsize>,
    pub required: Arc<Mutex<Option<String>>>,
}

impl Issuer {
    pub async fn start(signers: &[&Signer]) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = IssuerState {
            url: url.clone(),
            keys: Arc::new(Mutex::new(Value::Null)),
            fetches: Arc::new(AtomicUsize::new(0)),
            required: Arc::new(Mutex::new(None)),
        };
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<IssuerState>| async move {
                    axum::Json(json!({"issuer": s.url, "jwks_uri": format!("{}/keys", s.url)}))
                }),
            )
            .route(
                "/keys",
                get(
                    |State(s): State<IssuerState>, headers: axum::http::HeaderMap| async move {
                        use axum::response::IntoResponse;
                        s.fetches.fetch_add(1, Ordering::SeqCst);
                        let required = s.required.lock().unwrap().clone();
                        if let Some(t) = required {
                            let given = headers.get("authorization").and_then(|v| v.to_str().ok());
                            if given != Some(format!("Bearer {t}").as_str()) {
                                return axum::http::StatusCode::UNAUTHORIZED.into_response();
                            }
                        }
                        axum::Json(s.keys.lock().unwrap().clone()).into_response()
                    },
                ),
            )
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let issuer = Issuer {
            url,
            keys: state.keys,
            fetches: state.fetches,
            required: state.required,
        };
        issuer.set_keys(signers);
        issuer
    }

    pub fn set_keys(&self, signers: &[&Signer]) {
        let keys: Vec<Value> = signers.iter().map(|s| s.jwk.clone()).collect();
        *self.keys.lock().unwrap() = json!({ "keys": keys });
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    pub fn options(&self, min_refresh: Duration) -> OidcOptions {
        OidcOptions {
            issuers: vec![IssuerOptions {
                issuer: self.url.clone(),
                keys: KeySource::Discovery,
            }],
            min_refresh,
            ..OidcOptions::default()
        }
    }
}

pub const BROKERS: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: orders, namespace: team-a}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: open, namespace: team-a}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: other, namespace: team-b}
"#;

pub fn triggers(sub: &Subscriber) -> String {
    let mut y = String::new();
    for (ns, broker) in [
        ("team-a", "orders"),
        ("team-a", "open"),
        ("team-b", "other"),
    ] {
        y.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: all-{broker}, namespace: {ns}}}\nspec:\n  broker: {broker}\n  subscriber: {{uri: '{}'}}\n",
            sub.url(&format!("/{broker}"))
        ));
    }
    y
}

pub const ORDERS_POLICY: &str = r#"
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: orders-producer, namespace: team-a}
spec:
  to:
  - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}
  from:
  - ref: {apiVersion: v1, kind: ServiceAccount, name: producer, namespace: team-a}
  filters:
  - exact: {type: com.example.order.created}
"#;

pub fn options(dir: &Path, yaml: &str) -> ServerOptions {
    super::server_options(yaml, &dir.join("data"))
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

pub async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
    id: &str,
    ty: &str,
) -> Answer {
    let mut req = client
        .post(format!("{base}{path}"))
        .body("{}")
        .header("content-type", "application/json");
    for (k, v) in super::binary_headers(id, ty) {
        req = req.header(k, v);
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// Posts events until one is not accepted: that answer, and how many were.
pub async fn until_refused(
    c: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
) -> (Answer, u64) {
    let mut accepted = 0u64;
    loop {
        let a = post(c, base, path, Some(token), &format!("e{accepted}"), "t").await;
        if a.status != 202 {
            return (a, accepted);
        }
        accepted += 1;
        assert!(accepted < 1000, "never refused");
    }
}

pub fn http(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

pub fn refusals(running: &Running, reason: AuthRefusal) -> u64 {
    running.metrics.auth_refusals(reason)
}
