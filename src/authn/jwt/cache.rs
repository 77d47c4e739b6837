//! The verified-token cache: keyed by the token's digest, kept until (at most) its `exp`, and
//! dropped as soon as its key leaves the issuer's JWKS.
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::Expiry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};

use super::{JwtAuthenticator, JwtError, JwtIdentity, RevocationFacts};
use crate::authn::AuthnError;

#[derive(Clone)]
pub(super) struct CachedToken {
    pub(super) identity: Arc<JwtIdentity>,
    pub(super) issuer: usize,
    pub(super) facts: Arc<RevocationFacts>,
}

/// The verified-token cache and its lookup counters, resolved once (not per request).
pub(super) struct TokenCache {
    /// Synchronous: a lookup is a hash-table read and never waits, so it needs no future (the
    /// async cache's lookup cost a future and its polling on every check).
    /// Keyed by a SHA-256 digest, so the table's own hash need not be SipHash.
    pub(super) cache: moka::sync::Cache<[u8; 32], CachedToken, ahash::RandomState>,
    pub(super) hits: Counter,
    pub(super) misses: Counter,
}

pub(super) struct UntilExp {
    pub(super) max_ttl: Duration,
}

impl Expiry<[u8; 32], CachedToken> for UntilExp {
    fn expire_after_create(&self, _: &[u8; 32], v: &CachedToken, _: Instant) -> Option<Duration> {
        let left = v.identity.expires_at.saturating_sub(unix_now());
        Some(Duration::from_secs(left).min(self.max_ttl))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CacheLabel {
    pub(super) result: &'static str,
}

impl JwtAuthenticator {
    /// Verifies one token; with `source`, its issuer must accept tokens from that source.
    /// `looked_up` is set to `hit` or `miss` when the verified-token cache was consulted.
    pub(super) async fn verify_from(
        &self,
        token: &str,
        source: Option<usize>,
        looked_up: &mut Option<&'static str>,
    ) -> Result<Arc<JwtIdentity>, AuthnError> {
        // Size first: nothing is parsed from an oversized token.
        if token.len() > self.max_token_bytes {
            return Err(JwtError::TooLarge.into());
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(TokenCache { cache, hits, misses }) = &self.cache {
            if let Some(hit) = cache.get(&digest) {
                if self.still_valid(&hit).await {
                    hits.inc();
                    *looked_up = Some("hit");
                    self.check_source(hit.issuer, source)?;
                    self.check_revoked(&hit.identity, hit.issuer, &hit.facts).await?;
                    return Ok(hit.identity);
                }
                cache.invalidate(&digest);
            }
            misses.inc();
            *looked_up = Some("miss");
        }
        if let Some(neg) = &self.negative
            && let Some(e) = neg.get(&digest)
        {
            return Err(e.into());
        }
        self.verifications.inc();
        // Boxed: the key fetch it may run is a large future, and inline it would make every
        // check's future (copied whole into its task) that large, cache hits included.
        let (identity, issuer, facts) = match Box::pin(self.verify_uncached(token, source)).await {
            Ok(v) => v,
            Err(e) => {
                if let (Some(neg), AuthnError::InvalidToken(je)) = (&self.negative, &e) {
                    neg.remember(digest, *je);
                }
                return Err(e);
            }
        };
        let facts = Arc::new(facts?);
        if let Some(TokenCache { cache, .. }) = &self.cache {
            let entry = CachedToken { identity: identity.clone(), issuer, facts: facts.clone() };
            cache.insert(digest, entry);
        }
        self.check_revoked(&identity, issuer, &facts).await?;
        Ok(identity)
    }

    /// A cached token stays good only while unexpired and while its exact key is still served.
    async fn still_valid(&self, hit: &CachedToken) -> bool {
        if unix_now() >= hit.identity.expires_at {
            return false;
        }
        let Some(iss) = self.issuers.get(hit.issuer) else { return false };
        match iss.keys.serving().await {
            Some(set) => {
                set.find(hit.identity.kid.as_deref()).is_some_and(|k| k.fingerprint == hit.identity.key_fingerprint)
            }
            None => false,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
