//! OIDC sender authentication: bearer tokens (JWTs) checked against the keys of
//! configured issuers (`--oidc-issuer`, `--oidc-jwks`).
//!
//! - **Keys.** Each issuer's JWKS comes from OpenID discovery
//!   (`<issuer>/.well-known/openid-configuration` → `jwks_uri`) or is given as a file
//!   or URL. Keys are fetched at start, every [`OidcOptions::refresh`], and when a
//!   token names a `kid` the issuer's keys do not have (key rotation) — that last at
//!   most once per [`OidcOptions::min_refresh`] per issuer, one fetch at a time, so
//!   a flood of made-up `kid`s costs one fetch per interval. A fetch that fails keeps
//!   the keys already held. Only RSA (RS256), EC P-256 (ES256) and Ed25519 (EdDSA)
//!   keys are used; a token must be signed with its key's algorithm (no `none`, no
//!   HMAC with a public key as the secret).
//! - **Claims.** `iss` selects the issuer (read before the signature is checked,
//!   then checked again by it), `aud` must be the broker's audience
//!   (`eventing.knative.dev/broker/<namespace>/<name>`), `exp` must not have passed
//!   and `nbf` must have come, each with [`OidcOptions::clock_skew`]; `sub` is the
//!   sender identity.
//! - **Transport.** Discovery documents and JWKS are fetched over HTTPS only (plain
//!   HTTP is accepted for loopback addresses, for tests and sidecars), and a redirect
//!   to anything else is refused: whoever can answer a key fetch can forge any
//!   sender.
//! - **Claims' types.** `exp`, `nbf` and `iat` must be numbers: a token whose `nbf`
//!   is a string is refused, not treated as having none (jsonwebtoken before 10.3
//!   did the latter, GHSA-h395-gr6q-cpjc; the claims are read typed here as well).
//! - **Identities.** With one issuer, a token's identity is its `sub`. With several,
//!   only the first configured issuer's subjects are used as they are (the
//!   cluster's, whose `system:serviceaccount:` subjects policies name); another
//!   issuer's are `<iss>#<sub>`, so an issuer where users pick their names cannot
//!   pass for a service account.
//! - **Cache.** A verified token is remembered until it expires, keyed by the
//!   SHA-256 of the token and the audience (the token itself is not kept), in a map
//!   of at most [`OidcOptions::cache_size`] entries (when full, expired entries go
//!   first, then the one expiring soonest), so the hot path hashes instead of
//!   checking a signature. An entry holds the generation of its issuer's keys: once
//!   a refresh changes the keys (a key revoked), cached tokens are checked again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod cache;
mod keys;

use cache::{CacheEntry, CacheKey};
use keys::{check_url, is_loopback, Issuer, KeySet};

use base64::Engine as _;
use broker::telemetry::{AuthRefusal, Metrics};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// The largest token looked at; a longer `Authorization` value is refused unread.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;
/// The largest discovery document or JWKS read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// How long one discovery or JWKS request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// OpenID discovery on the issuer URL (`--oidc-issuer`).
    Discovery,
    /// A JWKS file, read again when keys are refreshed (`--oidc-jwks ISSUER=FILE`).
    File(PathBuf),
    /// A JWKS URL (`--oidc-jwks ISSUER=URL`).
    Url(String),
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerOptions {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Its keys.
    pub keys: KeySource,
}

impl IssuerOptions {
    /// Parses `--oidc-jwks ISSUER=FILE|URL`.
    pub fn parse_jwks(arg: &str) -> Result<IssuerOptions, String> {
        // The issuer is a URL without '=' in practice (Kubernetes', Dex's, ...);
        // the location may hold one (a query string).
        let Some((issuer, location)) = arg.split_once('=') else {
            return Err(format!(
                "--oidc-jwks {arg}: expected ISSUER=FILE or ISSUER=URL"
            ));
        };
        if issuer.is_empty() || location.is_empty() {
            return Err(format!(
                "--oidc-jwks {arg}: expected ISSUER=FILE or ISSUER=URL"
            ));
        }
        let keys = if location.starts_with("https://") || location.starts_with("http://") {
            KeySource::Url(location.to_owned())
        } else {
            KeySource::File(PathBuf::from(location))
        };
        Ok(IssuerOptions {
            issuer: issuer.to_owned(),
            keys,
        })
    }
}

/// OIDC settings.
#[derive(Debug, Clone)]
pub struct OidcOptions {
    /// Trusted issuers.
    pub issuers: Vec<IssuerOptions>,
    /// Tolerance on `exp` and `nbf` (`--oidc-clock-skew`, default 60 s).
    pub clock_skew: Duration,
    /// How often every issuer's keys are fetched again (`--oidc-jwks-refresh`,
    /// default 5 minutes).
    pub refresh: Duration,
    /// The shortest time between two fetches of one issuer's keys for an unknown
    /// `kid` (`--oidc-jwks-min-refresh`, default 10 s).
    pub min_refresh: Duration,
    /// Most verified tokens remembered (`--oidc-token-cache-size`, default 10,000;
    /// 0 turns the cache off).
    pub cache_size: usize,
    /// PEM CA certificates trusted for discovery and JWKS over HTTPS, besides the
    /// system roots (`--ca-bundle`).
    pub ca_bundle: Option<Vec<u8>>,
    /// A bearer token file sent with discovery and JWKS requests
    /// (`--oidc-fetch-token-file`): a Kubernetes API server serves its issuer's
    /// keys to authenticated callers only, unless anonymous access is granted. Read
    /// at each fetch (a projected token rotates).
    pub fetch_token_file: Option<PathBuf>,
}

impl Default for OidcOptions {
    fn default() -> Self {
        OidcOptions {
            issuers: Vec::new(),
            clock_skew: Duration::from_secs(60),
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(10),
            cache_size: 10_000,
            ca_bundle: None,
            fetch_token_file: None,
        }
    }
}

/// Why a token was refused, with what to tell the sender.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct TokenError {
    /// The metric's reason.
    pub reason: AuthRefusal,
    /// One sentence for the 401 body and the audit line (never the token).
    pub detail: String,
}

fn refuse(reason: AuthRefusal, detail: impl Into<String>) -> TokenError {
    TokenError {
        reason,
        detail: detail.into(),
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// `sub`: the sender identity.
    pub subject: Arc<str>,
    /// `iss`.
    pub issuer: Arc<str>,
    /// `exp`, seconds since the epoch.
    pub expires: u64,
}

/// The claims read from a verified token; the time claims are typed so that one
/// of the wrong type fails the whole token.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[allow(dead_code)]
    #[serde(default)]
    nbf: Option<u64>,
    #[allow(dead_code)]
    #[serde(default)]
    iat: Option<u64>,
}

#[derive(Deserialize)]
struct Peek {
    iss: Option<String>,
}

/// Checks bearer tokens; see the module docs.
pub struct Verifier {
    issuers: HashMap<String, Arc<Issuer>>,
    options: OidcOptions,
    client: reqwest::Client,
    cache: RwLock<HashMap<CacheKey, CacheEntry>>,
    /// The issuer whose subjects are identities as they are (the first).
    primary: String,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.options.issuers)
            .finish()
    }
}

/// At most 128 bytes of a value from a token, cut at a character boundary, for
/// answers and logs.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(128);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `iss` of a token, read without checking anything else.
fn peek_issuer(token: &str) -> Result<String, TokenError> {
    let malformed = |what: &str| {
        refuse(
            AuthRefusal::malformed_token,
            format!("the bearer token is not a JWT: {what}"),
        )
    };
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| malformed("the payload is not base64url"))?;
    let peek: Peek = serde_json::from_slice(&bytes)
        .map_err(|_| malformed("the payload is not a JSON object"))?;
    peek.iss
        .ok_or_else(|| refuse(AuthRefusal::malformed_token, "the token has no iss claim"))
}

impl Verifier {
    /// Builds the verifier and fetches every issuer's keys once. A JWKS file that
    /// cannot be read or holds no usable key is an error; an issuer that cannot be
    /// reached is logged and tried again on demand and every refresh.
    pub async fn new(options: OidcOptions, metrics: Arc<Metrics>) -> Result<Arc<Verifier>, String> {
        if options.issuers.is_empty() {
            return Err("OIDC: no issuer configured (--oidc-issuer or --oidc-jwks)".into());
        }
        for i in &options.issuers {
            match &i.keys {
                KeySource::Discovery => check_url(&i.issuer, "--oidc-issuer")?,
                KeySource::Url(u) => check_url(u, "--oidc-jwks")?,
                KeySource::File(_) => {}
            }
        }
        let mut builder = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            // Redirects stay on https (or loopback): no downgrade to plain HTTP.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let ok = attempt.url().scheme() == "https" || is_loopback(attempt.url());
                if !ok {
                    attempt.error("a redirect away from https")
                } else if attempt.previous().len() >= 3 {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }));
        if let Some(pem) = &options.ca_bundle {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("--ca-bundle: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("OIDC: HTTP client: {e}"))?;
        let mut issuers = HashMap::new();
        for i in &options.issuers {
            if issuers.contains_key(&i.issuer) {
                return Err(format!("OIDC: issuer {} is configured twice", i.issuer));
            }
            issuers.insert(
                i.issuer.clone(),
                Arc::new(Issuer {
                    options: i.clone(),
                    keys: RwLock::new(Arc::new(KeySet::default())),
                    generation: std::sync::atomic::AtomicU64::new(0),
                    fetched: tokio::sync::Mutex::new(None),
                }),
            );
        }
        let primary = options.issuers[0].issuer.clone();
        let verifier = Arc::new(Verifier {
            issuers,
            options,
            client,
            cache: RwLock::new(HashMap::new()),
            primary,
            metrics,
        });
        for issuer in verifier.issuers.values() {
            let mut fetched = issuer.fetched.lock().await;
            match verifier.fetch(issuer).await {
                Ok(n) => {
                    tracing::info!(issuer = %issuer.options.issuer, keys = n, "OIDC issuer keys loaded")
                }
                Err(e) if matches!(issuer.options.keys, KeySource::File(_)) => return Err(e),
                Err(e) => tracing::error!(issuer = %issuer.options.issuer, error = %e,
                    "OIDC issuer keys not loaded; its tokens are refused until they are"),
            }
            *fetched = Some(Instant::now());
        }
        Ok(verifier)
    }

    /// Fetches the issuer's keys every [`OidcOptions::refresh`] until `stop`.
    pub fn watch(self: Arc<Self>, stop: CancellationToken) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(self.options.refresh) => {}
                }
                for issuer in self.issuers.values() {
                    let mut fetched = issuer.fetched.lock().await;
                    if let Err(e) = self.fetch(issuer).await {
                        tracing::warn!(issuer = %issuer.options.issuer, error = %e,
                            "OIDC issuer keys not refreshed; the previous keys stay");
                    }
                    *fetched = Some(Instant::now());
                }
                self.sweep();
            }
        });
    }

    /// Checks `token` for a broker of `audience`: the cache first, then the whole
    /// check (see the module docs).
    pub async fn verify(&self, token: &str, audience: &str) -> Result<Verified, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refuse(
                AuthRefusal::malformed_token,
                format!("the bearer token is longer than {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        let key = Self::cache_key(token, audience);
        if let Some(hit) = self.cached(&key) {
            return hit;
        }
        // The generation before the check: keys changed meanwhile make the entry
        // stale at once rather than never.
        let generation = self.generation(&peek_issuer(token)?).unwrap_or(0);
        let verified = self.verify_uncached(token, audience).await?;
        self.remember(key, &verified, generation);
        Ok(verified)
    }

    /// The whole check, without the cache (also what the benchmark compares with).
    pub async fn verify_uncached(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            refuse(
                AuthRefusal::malformed_token,
                format!("the bearer token's header is not valid: {e}"),
            )
        })?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(refuse(
                AuthRefusal::algorithm,
                format!(
                    "the token is signed with {:?}: only RS256, ES256 and EdDSA are accepted",
                    header.alg
                ),
            ));
        }
        let iss = peek_issuer(token)?;
        let Some(issuer) = self.issuers.get(&iss) else {
            return Err(refuse(
                AuthRefusal::unknown_issuer,
                format!("issuer {:?} is not trusted", clip(&iss)),
            ));
        };
        let keys = self.key(issuer, header.kid.as_deref()).await?;
        let mut last = refuse(
            AuthRefusal::algorithm,
            format!(
                "no key of issuer {iss} verifies {:?} signatures",
                header.alg
            ),
        );
        for key in keys.iter().filter(|k| k.algorithm == header.alg) {
            let mut validation = Validation::new(key.algorithm);
            validation.leeway = self.options.clock_skew.as_secs();
            validation.validate_nbf = true;
            validation.set_audience(&[audience]);
            validation.set_issuer(&[&iss]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let sub = data.claims.sub;
                    let subject = if iss == self.primary {
                        sub
                    } else {
                        format!("{iss}#{sub}")
                    };
                    return Ok(Verified {
                        subject: subject.into(),
                        issuer: iss.into(),
                        expires: data.claims.exp,
                    });
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature => refuse(
                            AuthRefusal::bad_signature,
                            "the token's signature does not verify",
                        ),
                        K::ExpiredSignature => {
                            refuse(AuthRefusal::expired, "the token has expired")
                        }
                        K::ImmatureSignature => refuse(
                            AuthRefusal::not_yet_valid,
                            "the token is not valid yet (nbf)",
                        ),
                        K::InvalidAudience => refuse(
                            AuthRefusal::wrong_audience,
                            format!("the token is not for audience {audience}"),
                        ),
                        K::InvalidIssuer => refuse(
                            AuthRefusal::unknown_issuer,
                            "the token's issuer does not match",
                        ),
                        K::MissingRequiredClaim(c) => refuse(
                            AuthRefusal::malformed_token,
                            format!("the token has no {c} claim"),
                        ),
                        K::InvalidAlgorithm => refuse(
                            AuthRefusal::algorithm,
                            "the token's algorithm is not its key's",
                        ),
                        other => refuse(
                            AuthRefusal::malformed_token,
                            format!("the token is not valid: {other:?}"),
                        ),
                    };
                    // Only a signature failure is worth trying the next key for.
                    if last.reason != AuthRefusal::bad_signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn jwks_flag() {
        let i = IssuerOptions::parse_jwks("https://k8s.example=/var/run/jwks.json").unwrap();
        assert_eq!(i.issuer, "https://k8s.example");
        assert_eq!(i.keys, KeySource::File("/var/run/jwks.json".into()));
        let i =
            IssuerOptions::parse_jwks("https://k8s.example=https://k8s.example/keys?a=b").unwrap();
        assert_eq!(
            i.keys,
            KeySource::Url("https://k8s.example/keys?a=b".into())
        );
        for bad in ["https://k8s.example", "=x", "https://k8s.example="] {
            assert!(IssuerOptions::parse_jwks(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peeking() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.sig", b64("{}"), b64(r#"{"iss":"https://i"}"#));
        assert_eq!(peek_issuer(&token).unwrap(), "https://i");
        for bad in [
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!("x.{}.y", b64("[1]")),
            format!("x.{}.y", b64(r#"{"sub":"s"}"#)),
            "x.!!!.y".to_owned(),
        ] {
            assert!(peek_issuer(&bad).is_err(), "{bad}");
        }
    }
}
