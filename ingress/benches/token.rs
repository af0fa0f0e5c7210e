//! The cost of checking a bearer token on the ingress's hot path: a full check
//! (header, issuer, key lookup, signature, claims) against the cached one (a hash
//! and a string comparison), for ES256 (a key made here) and RS256 (the 2048-bit
//! test fixture key), and a forged ES256 token (refused after its signature check).
//! Each iteration runs the async check to completion on a current-thread runtime
//! (`block_on`, the same for every case). Run:
//! `cargo bench -p ingress --bench token -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use broker::telemetry::Metrics;
use criterion::{criterion_group, criterion_main, Criterion};
use ingress::auth::oidc::{IssuerOptions, KeySource, OidcOptions, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const ISSUER: &str = "https://issuer.bench.invalid";
const AUDIENCE: &str = "eventing.knative.dev/broker/default/default";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    let claims = json!({"iss": ISSUER, "sub": "system:serviceaccount:default:bench",
        "aud": AUDIENCE, "iat": now, "exp": now + 3600});
    jsonwebtoken::encode(&h, &claims, key).expect("signing")
}

fn bench(c: &mut Criterion) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = es.public_key_raw();
    let rsa_jwk: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures.join("oidc-test-rsa.jwk.json")).expect("fixture"),
    )
    .expect("fixture JSON");
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks = dir.path().join("jwks.json");
    let es_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "es", "use": "sig",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    std::fs::write(&jwks, json!({"keys": [es_jwk, rsa_jwk]}).to_string()).expect("write");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let verifier: Arc<Verifier> = rt
        .block_on(Verifier::new(
            OidcOptions {
                issuers: vec![IssuerOptions {
                    issuer: ISSUER.into(),
                    keys: KeySource::File(jwks),
                }],
                ..OidcOptions::default()
            },
            Metrics::shared(),
        ))
        .expect("verifier");
    let es_token = token(
        Algorithm::ES256,
        "es",
        &EncodingKey::from_ec_der(&es.serialize_der()),
    );
    let rsa_token = token(
        Algorithm::RS256,
        "rsa-1",
        &EncodingKey::from_rsa_der(
            &std::fs::read(fixtures.join("oidc-test-rsa.der")).expect("fixture"),
        ),
    );
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let forged = token(
        Algorithm::ES256,
        "es",
        &EncodingKey::from_ec_der(&other.serialize_der()),
    );
    let mut g = c.benchmark_group("token");
    for (name, t) in [("es256", &es_token), ("rs256", &rsa_token)] {
        assert!(
            rt.block_on(verifier.verify(t, AUDIENCE)).is_ok(),
            "{name} verifies"
        );
        g.bench_function(format!("{name}/uncached"), |b| {
            b.iter(|| rt.block_on(verifier.verify_uncached(black_box(t), AUDIENCE)))
        });
        g.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| rt.block_on(verifier.verify(black_box(t), AUDIENCE)))
        });
    }
    assert!(rt.block_on(verifier.verify(&forged, AUDIENCE)).is_err());
    g.bench_function("es256/forged", |b| {
        b.iter(|| rt.block_on(verifier.verify(black_box(&forged), AUDIENCE)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
