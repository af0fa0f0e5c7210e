//! The cache of verified tokens: keyed by SHA-256 of the token and the audience,
//! valid until the token expires and while its issuer's keys are those that
//! verified it, bounded by `--oidc-token-cache-size`. See the parent module's docs.

use super::{now_secs, refuse, TokenError, Verified, Verifier};
use broker::telemetry::AuthRefusal;

pub(super) struct CacheEntry {
    pub(super) verified: Verified,
    /// The generation of the issuer's keys that verified the token.
    pub(super) generation: u64,
}

/// SHA-256 of the token and the audience: the cache's key.
pub(super) type CacheKey = [u8; 32];

impl Verifier {
    pub(super) fn cache_key(token: &str, audience: &str) -> CacheKey {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(token.as_bytes());
        // A token holds no NUL: the audience cannot shift into it.
        ctx.update(&[0]);
        ctx.update(audience.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    pub(super) fn generation(&self, issuer: &str) -> Option<u64> {
        self.issuers
            .get(issuer)
            .map(|i| i.generation.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A cached verification, if it is still valid: not expired, and verified by
    /// the issuer's keys of now.
    pub(super) fn cached(&self, key: &CacheKey) -> Option<Result<Verified, TokenError>> {
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

    pub(super) fn remember(&self, key: CacheKey, verified: &Verified, generation: u64) {
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
    pub(super) fn sweep(&self) {
        let now = now_secs();
        let skew = self.options.clock_skew.as_secs();
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, e| e.verified.expires.saturating_add(skew) >= now);
        self.metrics.token_cache_entries.set(cache.len() as i64);
    }
}
