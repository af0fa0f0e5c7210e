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

use base64::Engine as _;
use broker::telemetry::{AuthRefusal, Metrics, ReloadOutcome};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
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

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

struct Key {
    key: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid`, tried in turn for a token without one.
    anonymous: Vec<Arc<Key>>,
    /// The usable JWKs as fetched, sorted: two sets with the same are the same keys.
    fingerprint: Vec<String>,
}

impl KeySet {
    /// Builds the usable keys of a JWKS; keys of other types (or that do not
    /// parse) are skipped, so one odd key does not cost the others.
    fn from_jwks(set: &RawJwks) -> (KeySet, usize) {
        let mut keys = KeySet::default();
        let mut skipped = 0;
        for value in &set.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
                skipped += 1;
                continue;
            };
            let jwk = &jwk;
            match usable(jwk) {
                Some(key) => {
                    keys.fingerprint.push(value.to_string());
                    let key = Arc::new(key);
                    match &jwk.common.key_id {
                        Some(kid) => {
                            keys.by_kid.insert(kid.clone(), key);
                        }
                        None => keys.anonymous.push(key),
                    }
                }
                None => skipped += 1,
            }
        }
        keys.fingerprint.sort();
        (keys, skipped)
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }
}

/// The key of a JWK, with the one algorithm it verifies; `None` for anything but
/// RSA, EC P-256 and Ed25519 public keys for signatures.
fn usable(jwk: &Jwk) -> Option<Key> {
    use jsonwebtoken::jwk::PublicKeyUse;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    // A JWK that names another algorithm than its type's (RS384, say) is not used.
    if let Some(alg) = &jwk.common.key_algorithm {
        let named = format!("{alg:?}");
        if named != format!("{algorithm:?}") {
            return None;
        }
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key { key, algorithm })
}

struct Issuer {
    options: IssuerOptions,
    keys: RwLock<Arc<KeySet>>,
    /// Bumped whenever a fetch changes the keys: cached tokens of an older
    /// generation are verified again.
    generation: std::sync::atomic::AtomicU64,
    /// When the keys were last fetched (successfully or not); held while fetching.
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

struct CacheEntry {
    verified: Verified,
    /// The generation of the issuer's keys that verified the token.
    generation: u64,
}

/// SHA-256 of the token and the audience: the cache's key.
type CacheKey = [u8; 32];

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

/// Whether `url` may carry keys: HTTPS, or plain HTTP to a loopback address.
fn check_url(url: &str, what: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{what} {url}: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        _ => Err(format!(
            "{what} {url}: keys are fetched over https only (http is accepted for loopback addresses)"
        )),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
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

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut req = self.client.get(url);
        if let Some(path) = &self.options.fetch_token_file {
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("--oidc-fetch-token-file {}: {e}", path.display()))?;
            req = req.bearer_auth(token.trim());
        }
        let mut resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("GET {url}: larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Reads the issuer's keys from its source and installs them; the number of
    /// usable keys. Call with `issuer.fetched` held.
    async fn fetch(&self, issuer: &Issuer) -> Result<usize, String> {
        let name = &issuer.options.issuer;
        let result = async {
            let document = match &issuer.options.keys {
                KeySource::File(path) => tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("--oidc-jwks {name}={}: {e}", path.display()))?,
                KeySource::Url(url) => self.get(url).await?,
                KeySource::Discovery => {
                    let url = format!(
                        "{}/.well-known/openid-configuration",
                        name.trim_end_matches('/')
                    );
                    let doc: Discovery = serde_json::from_slice(&self.get(&url).await?)
                        .map_err(|e| format!("{url}: not an OpenID configuration: {e}"))?;
                    if doc.issuer != *name {
                        return Err(format!(
                            "{url}: names issuer {} instead of {name}",
                            clip(&doc.issuer)
                        ));
                    }
                    check_url(&doc.jwks_uri, "jwks_uri")?;
                    self.get(&doc.jwks_uri).await?
                }
            };
            let set: RawJwks = serde_json::from_slice(&document)
                .map_err(|e| format!("issuer {name}: not a JWKS: {e}"))?;
            let (keys, skipped) = KeySet::from_jwks(&set);
            if keys.len() == 0 {
                return Err(format!(
                    "issuer {name}: no usable key in its JWKS ({skipped} of another type: only RSA, EC P-256 and Ed25519 signing keys are used)"
                ));
            }
            Ok(keys)
        }
        .await;
        match result {
            Ok(keys) => {
                let n = keys.len();
                let mut held = issuer.keys.write().unwrap_or_else(|e| e.into_inner());
                let same = held.fingerprint == keys.fingerprint;
                if !same {
                    *held = Arc::new(keys);
                    issuer
                        .generation
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.metrics.jwks_refresh(if same {
                    ReloadOutcome::unchanged
                } else {
                    ReloadOutcome::applied
                });
                Ok(n)
            }
            Err(e) => {
                self.metrics.jwks_refresh(ReloadOutcome::failed);
                Err(e)
            }
        }
    }

    /// The key for `kid`, fetching the issuer's keys again (bounded) when it does
    /// not have it.
    async fn key(&self, issuer: &Issuer, kid: Option<&str>) -> Result<Vec<Arc<Key>>, TokenError> {
        let find = |keys: &KeySet| -> Vec<Arc<Key>> {
            match kid {
                Some(kid) => keys.by_kid.get(kid).cloned().into_iter().collect(),
                None => keys
                    .anonymous
                    .iter()
                    .chain(keys.by_kid.values())
                    .cloned()
                    .collect(),
            }
        };
        let held = issuer
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let found = find(&held);
        if !found.is_empty() {
            return Ok(found);
        }
        let mut fetched = issuer.fetched.lock().await;
        // Another request may have fetched them while this one waited.
        let now_held = issuer
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !Arc::ptr_eq(&now_held, &held) {
            let found = find(&now_held);
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let due = fetched.is_none_or(|t| t.elapsed() >= self.options.min_refresh);
        let unavailable = || {
            refuse(
                AuthRefusal::keys_unavailable,
                format!(
                    "the keys of issuer {} cannot be fetched; retry shortly",
                    issuer.options.issuer
                ),
            )
        };
        if !due && now_held.len() == 0 {
            return Err(unavailable());
        }
        if due {
            let result = self.fetch(issuer).await;
            *fetched = Some(Instant::now());
            if let Err(e) = result {
                tracing::warn!(issuer = %issuer.options.issuer, error = %e, "OIDC issuer keys not refreshed");
                if now_held.len() == 0 {
                    return Err(unavailable());
                }
            }
            let found = find(&issuer.keys.read().unwrap_or_else(|e| e.into_inner()));
            if !found.is_empty() {
                return Ok(found);
            }
        }
        Err(refuse(
            AuthRefusal::unknown_key,
            match kid {
                Some(kid) => format!(
                    "issuer {} has no key with kid {:?}",
                    issuer.options.issuer,
                    clip(kid)
                ),
                None => format!("issuer {} has no key for this token", issuer.options.issuer),
            },
        ))
    }

    fn cache_key(token: &str, audience: &str) -> CacheKey {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(token.as_bytes());
        // A token holds no NUL: the audience cannot shift into it.
        ctx.update(&[0]);
        ctx.update(audience.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    fn generation(&self, issuer: &str) -> Option<u64> {
        self.issuers
            .get(issuer)
            .map(|i| i.generation.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A cached verification, if it is still valid: not expired, and verified by
    /// the issuer's keys of now.
    fn cached(&self, key: &CacheKey) -> Option<Result<Verified, TokenError>> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(key)?;
        let skew = self.options.clock_skew.as_secs();
        if entry.verified.expires.saturating_add(skew) < now_secs() {
            return Some(Err(refuse(AuthRefusal::expired, "the token has expired")));
        }
        if self.generation(&entry.verified.issuer) != Some(entry.generation) {
            return None;
        }
        Some(Ok(entry.verified.clone()))
    }

    fn remember(&self, key: CacheKey, verified: &Verified, generation: u64) {
        if self.options.cache_size == 0 {
            return;
        }
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.options.cache_size && !cache.contains_key(&key) {
            let now = now_secs();
            let skew = self.options.clock_skew.as_secs();
            cache.retain(|_, e| e.verified.expires.saturating_add(skew) >= now);
            if cache.len() >= self.options.cache_size {
                // Full of live tokens: the one expiring soonest makes room.
                if let Some(k) = cache
                    .iter()
                    .min_by_key(|(_, e)| e.verified.expires)
                    .map(|(k, _)| *k)
                {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            key,
            CacheEntry {
                verified: verified.clone(),
                generation,
            },
        );
        self.metrics.token_cache_entries.set(cache.len() as i64);
    }

    /// Drops expired tokens from the cache.
    fn sweep(&self) {
        let now = now_secs();
        let skew = self.options.clock_skew.as_secs();
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, e| e.verified.expires.saturating_add(skew) >= now);
        self.metrics.token_cache_entries.set(cache.len() as i64);
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
