//! The negative token cache: a short-lived, bounded memory of tokens refused for what the token
//! itself is (its signature, format or algorithm), keyed by the token's SHA-256, so a flood of
//! one forged token costs one verification instead of one per request. Failures that may turn
//! into a success without the token changing are never remembered: an unknown `kid` (the
//! issuer may publish it next), keys that could not be had, a token not yet valid. An expired
//! token is remembered: time only moves forward, so it cannot become valid again.
use std::time::Duration;

use prometheus_client::metrics::{counter::Counter, family::Family};

use super::JwtError;
use super::cache::CacheLabel;

pub(super) struct NegativeCache {
    /// Synchronous, as the verified-token cache: a lookup never waits, so it needs no future
    /// (every fresh token is looked up here first).
    cache: moka::sync::Cache<[u8; 32], JwtError>,
    /// Resolved once from the lookups family, not per request.
    hits: Counter,
    misses: Counter,
}

impl NegativeCache {
    /// `None` when disabled (a zero TTL or capacity).
    pub(super) fn new(ttl: Duration, capacity: u64, lookups: Family<CacheLabel, Counter>) -> Option<Self> {
        if ttl.is_zero() || capacity == 0 {
            return None;
        }
        let cache = moka::sync::Cache::builder().max_capacity(capacity).time_to_live(ttl).build();
        let hits = lookups.get_or_create(&CacheLabel { result: "hit" }).clone();
        let misses = lookups.get_or_create(&CacheLabel { result: "miss" }).clone();
        Some(Self { cache, hits, misses })
    }

    /// The remembered refusal of this token, if any.
    pub(super) fn get(&self, digest: &[u8; 32]) -> Option<JwtError> {
        let hit = self.cache.get(digest);
        if hit.is_some() { &self.hits } else { &self.misses }.inc();
        hit
    }

    /// Remembers a refusal, if it is one that cannot turn into a success for the same token.
    pub(super) fn remember(&self, digest: [u8; 32], e: JwtError) {
        if cacheable(e) {
            self.cache.insert(digest, e);
        }
    }

    #[cfg(test)]
    fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

/// Whether a refusal depends only on the token's own bytes (and the keys, for a signature):
/// never on the request it came in (source, duplicates), on time still to come, or on keys
/// that may yet be published or fetched.
fn cacheable(e: JwtError) -> bool {
    match e {
        JwtError::Malformed
        | JwtError::Encrypted
        | JwtError::AlgNone
        | JwtError::UnsupportedAlgorithm
        | JwtError::AlgorithmNotAllowed
        | JwtError::EmbeddedKey
        | JwtError::UnknownCritical
        | JwtError::KeyMismatch
        | JwtError::BadSignature
        | JwtError::Expired
        | JwtError::WrongTokenType
        | JwtError::TooOld // like Expired: time only moves forward
        | JwtError::TooManyClaimValues => true,
        JwtError::TooLarge // refused before any work anyway
        | JwtError::UnknownKey
        | JwtError::NotYetValid
        | JwtError::IssuedInFuture // becomes valid as time passes
        | JwtError::UnknownIssuer
        | JwtError::BadAudience
        | JwtError::MissingClaim
        | JwtError::Duplicate
        | JwtError::WrongSource
        // Revocation is decided after verification and never remembered here.
        | JwtError::Revoked
        | JwtError::StatusUriNotAllowed => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> NegativeCache {
        NegativeCache::new(Duration::from_secs(60), 2, Family::default()).expect("enabled")
    }

    #[tokio::test]
    async fn only_failures_of_the_token_itself_are_remembered() {
        let c = cache();
        for (i, e) in [JwtError::UnknownKey, JwtError::NotYetValid, JwtError::WrongSource, JwtError::Duplicate]
            .into_iter()
            .enumerate()
        {
            c.remember([i as u8; 32], e);
            assert_eq!(c.get(&[i as u8; 32]), None, "{e:?} must not be remembered");
        }
        c.remember([9; 32], JwtError::BadSignature);
        assert_eq!(c.get(&[9; 32]), Some(JwtError::BadSignature));
        assert_eq!(c.get(&[8; 32]), None);
    }

    #[tokio::test]
    async fn bounded_and_disabled_by_zero() {
        let c = cache();
        for i in 0..100u8 {
            c.remember([i; 32], JwtError::Malformed);
        }
        let n = c.len();
        assert!(n <= 2, "{n}");
        assert!(NegativeCache::new(Duration::ZERO, 10, Family::default()).is_none());
        assert!(NegativeCache::new(Duration::from_secs(1), 0, Family::default()).is_none());
    }
}
