//! R1s: R1 with TLS and OIDC on. The server gets a certificate of a CA made here
//! (`--tls-cert`, `--tls-key`) and an issuer's JWKS file (`--oidc-jwks`) holding an
//! ES256 key made here; the generator connects over TLS (one handshake per
//! keep-alive connection) and sends a token of that key for the broker's audience
//! with every request, as a Knative source with a projected token does. The
//! default authorization mode (allow-same-namespace, the token is a service account
//! of the broker's namespace) is checked too. The baseline is R1 of the same run:
//! the same server and load without TLS and OIDC.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use serde_json::json;

use crate::load::ClientTls;

/// The issuer named in the JWKS flag and the tokens.
pub const ISSUER: &str = "https://issuer.bench.triggerfish.invalid";

/// What a secured server and its clients need: server flags, the client TLS, the
/// `Authorization` header.
pub struct Secured {
    /// `serve` flags.
    pub args: Vec<String>,
    /// The generator's TLS.
    pub tls: ClientTls,
    /// `Authorization: Bearer ...` for broker default/default.
    pub authorization: (HeaderName, HeaderValue),
}

/// Makes the CA, certificate, key and JWKS files under `dir`.
pub fn prepare(dir: &Path) -> anyhow::Result<Secured> {
    std::fs::create_dir_all(dir)?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?
        .signed_by(&key, &ca_cert, &ca_key)?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;

    let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let raw = signing.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bench", "use": "sig",
        "alg": "ES256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("bench".into());
    let token = jsonwebtoken::encode(
        &header,
        &json!({"iss": ISSUER, "sub": "system:serviceaccount:default:bench",
                "aud": "eventing.knative.dev/broker/default/default",
                "iat": now, "exp": now + 24 * 3600}),
        &jsonwebtoken::EncodingKey::from_ec_der(&signing.serialize_der()),
    )
    .context("signing the bench token")?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let path = |p: &Path| p.to_string_lossy().into_owned();
    Ok(Secured {
        args: vec![
            "--tls-cert".into(),
            path(&dir.join("tls.crt")),
            "--tls-key".into(),
            path(&dir.join("tls.key")),
            "--oidc-jwks".into(),
            format!("{ISSUER}={}", path(&jwks_path)),
        ],
        tls: ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name: rustls::pki_types::ServerName::try_from("localhost")?,
        },
        authorization: (
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        ),
    })
}
