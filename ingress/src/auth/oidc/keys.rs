//! An issuer's keys: where they come from (discovery, a JWKS file or URL, over
//! HTTPS only), which of them are used, and fetching them again (periodically, or
//! for an unknown `kid`, bounded). See the parent module's docs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use broker::telemetry::{AuthRefusal, ReloadOutcome};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use std::sync::RwLock;

use super::{clip, refuse, IssuerOptions, KeySource, TokenError, Verifier, MAX_DOCUMENT_BYTES};

#[derive(Deserialize)]
pub(super) struct RawJwks {
    pub(super) keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
pub(super) struct Discovery {
    pub(super) issuer: String,
    pub(super) jwks_uri: String,
}

pub(super) struct Key {
    pub(super) key: DecodingKey,
    pub(super) algorithm: Algorithm,
}

#[derive(Default)]
pub(super) struct KeySet {
    pub(super) by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid`, tried in turn for a token without one.
    pub(super) anonymous: Vec<Arc<Key>>,
    /// The usable JWKs as fetched, sorted: two sets with the same are the same keys.
    pub(super) fingerprint: Vec<String>,
}

impl KeySet {
    /// Builds the usable keys of a JWKS; keys of other types (or that do not
    /// parse) are skipped, so one odd key does not cost the others.
    pub(super) fn from_jwks(set: &RawJwks) -> (KeySet, usize) {
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

    pub(super) fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }
}

/// The key of a JWK, with the one algorithm it verifies; `None` for anything but
/// RSA, EC P-256 and Ed25519 public keys for signatures.
pub(super) fn usable(jwk: &Jwk) -> Option<Key> {
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

pub(super) struct Issuer {
    pub(super) options: IssuerOptions,
    pub(super) keys: RwLock<Arc<KeySet>>,
    /// Bumped whenever a fetch changes the keys: cached tokens of an older
    /// generation are verified again.
    pub(super) generation: std::sync::atomic::AtomicU64,
    /// When the keys were last fetched (successfully or not); held while fetching.
    pub(super) fetched: tokio::sync::Mutex<Option<Instant>>,
}

/// Whether `url` may carry keys: HTTPS, or plain HTTP to a loopback address.
pub(super) fn check_url(url: &str, what: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{what} {url}: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        _ => Err(format!(
            "{what} {url}: keys are fetched over https only (http is accepted for loopback addresses)"
        )),
    }
}

pub(super) fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl Verifier {
    pub(super) async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
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
    pub(super) async fn fetch(&self, issuer: &Issuer) -> Result<usize, String> {
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
    pub(super) async fn key(
        &self,
        issuer: &Issuer,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<Key>>, TokenError> {
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
}
