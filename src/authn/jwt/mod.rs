//! JWT bearer tokens (RFC 7519) verified per RFC 8725: the token's `iss` selects a configured
//! issuer; only that issuer's algorithms and keys are tried; nothing the token says about keys
//! (`jwk`, `jku`, `x5u`, `x5c`) is trusted. Verified tokens are cached by digest until (at most)
//! their `exp`, and a cached token is dropped as soon as its key leaves the JWKS.
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;

use super::AuthnError;
use super::jwks::{JwksMetrics, http_client};
use crate::config::{AuthnConfig, Limits, TokenSource};
use crate::request::RequestView;

mod cache;
mod claims;
mod extract;
mod members;
mod negative;
mod parse;
mod revocation;
mod status_list;
mod verify;

use cache::{CacheLabel, TokenCache, UntilExp};
use members::Members;
use negative::NegativeCache;
pub use revocation::{DenyListStore, spawn_watch as spawn_deny_list_watch};
use status_list::{StatusLists, StatusRef};
use verify::{Issuer, build_issuer};

pub use verify::algorithm;

/// What a verified token proved.
#[derive(Debug, Clone)]
pub struct JwtIdentity {
    pub issuer: Arc<str>,
    pub subject: String,
    /// Values of the issuer's group claims, as `Group` entity ids (`<issuer>#<group>` under
    /// `group_namespace: per_issuer`): become parent `Group` entities.
    pub groups: Vec<String>,
    /// Scalar claims not mapped elsewhere, as strings: become tags on the `User` entity.
    pub claims: Vec<(String, String)>,
    /// `(header, value)` pairs from the issuer's `claims_to_headers`, as sent upstream: made
    /// once per verified token and shared into every allow it gets, not copied per check.
    pub headers: Vec<(Bytes, Bytes)>,
    /// The subject and issuer as upstream header values, likewise made once.
    pub subject_value: Bytes,
    pub issuer_value: Bytes,
    /// OAuth scopes from `scope` and `scp`, sorted: the `User`'s `scopes` attribute.
    pub scopes: Vec<String>,
    /// The token's `aud` (a string or the strings of an array), for per-route audiences and
    /// the `User`'s `audiences` attribute.
    pub audiences: Vec<String>,
    /// Seconds since the epoch until which the identity holds: `exp`, or earlier when the
    /// issuer's `max_token_age` ends first.
    pub expires_at: u64,
    kid: Option<String>,
    key_fingerprint: [u8; 16],
    /// What an allow for this identity sets upstream, kept at its first allow.
    pub upstream: crate::authn::UpstreamSlot,
}

/// Why a token was refused. Each maps to a 401 `invalid_token` whose description names only the
/// class of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is larger than allowed")]
    TooLarge,
    #[error("token is malformed")]
    Malformed,
    #[error("encrypted tokens (JWE) are not accepted")]
    Encrypted,
    #[error("unsigned tokens are not accepted")]
    AlgNone,
    #[error("token algorithm is not supported")]
    UnsupportedAlgorithm,
    #[error("token algorithm is not allowed for this issuer")]
    AlgorithmNotAllowed,
    #[error("token carries its own key or key URL")]
    EmbeddedKey,
    #[error("token has an unsupported critical header")]
    UnknownCritical,
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    #[error("token key is not known")]
    UnknownKey,
    #[error("token does not match its key")]
    KeyMismatch,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token audience is not accepted")]
    BadAudience,
    #[error("token lacks a required claim")]
    MissingClaim,
    #[error("more than one token in the request")]
    Duplicate,
    #[error("token was sent where its issuer does not accept it")]
    WrongSource,
    #[error("token type is not accepted")]
    WrongTokenType,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token is older than allowed")]
    TooOld,
    #[error("token maps too many claim values")]
    TooManyClaimValues,
    #[error("token has been revoked")]
    Revoked,
    #[error("token status list is not trusted")]
    StatusUriNotAllowed,
}

impl JwtError {
    /// Bounded label for metrics and deny reasons.
    pub fn label(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "token_too_large",
            JwtError::Malformed => "token_malformed",
            JwtError::Encrypted => "token_encrypted",
            JwtError::AlgNone => "alg_none",
            JwtError::UnsupportedAlgorithm => "alg_unsupported",
            JwtError::AlgorithmNotAllowed => "alg_not_allowed",
            JwtError::EmbeddedKey => "embedded_key",
            JwtError::UnknownCritical => "unknown_crit",
            JwtError::UnknownIssuer => "unknown_issuer",
            JwtError::UnknownKey => "unknown_kid",
            JwtError::KeyMismatch => "key_mismatch",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::BadAudience => "bad_audience",
            JwtError::MissingClaim => "missing_claim",
            JwtError::Duplicate => "duplicate_token",
            JwtError::WrongSource => "wrong_token_source",
            JwtError::WrongTokenType => "wrong_token_type",
            JwtError::IssuedInFuture => "token_issued_in_future",
            JwtError::TooOld => "token_too_old",
            JwtError::TooManyClaimValues => "too_many_claim_values",
            JwtError::Revoked => "token_revoked",
            JwtError::StatusUriNotAllowed => "status_list_uri_not_allowed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Verifies bearer tokens against the configured issuers.
pub struct JwtAuthenticator {
    issuers: Vec<Issuer>,
    by_name: HashMap<String, usize>,
    sources: Vec<TokenSource>,
    max_token_bytes: usize,
    cache: Option<TokenCache>,
    rejections: Family<ReasonLabel, Counter>,
    negative: Option<NegativeCache>,
    verifications: Counter,
    deny_list: Option<Arc<DenyListStore>>,
    status_lists: StatusLists,
}

/// What revocation is judged on, read from a verified token's claims and kept with it in the
/// verified-token cache (so cache hits are checked too).
#[derive(Debug, Clone, Default)]
pub(super) struct RevocationFacts {
    jti: Option<String>,
    iat: Option<u64>,
    status: Option<StatusRef>,
}

impl RevocationFacts {
    /// From the claims of a token whose signature has just been verified.
    fn from_claims(claims: &Members) -> Result<Self, JwtError> {
        Ok(Self {
            jti: claims.get("jti").and_then(serde_json::Value::as_str).map(str::to_owned),
            // Fractional like any NumericDate (read as `check_iat` reads it).
            iat: claims.get("iat").and_then(verify::numeric_date),
            status: status_list::status_ref(claims)?,
        })
    }
}

impl JwtAuthenticator {
    pub fn new(cfg: &AuthnConfig, limits: &Limits, registry: &mut Registry) -> anyhow::Result<Self> {
        let client = http_client(cfg, None)?;
        let jwks_metrics = JwksMetrics::register(registry);
        let mut issuers = Vec::new();
        let mut by_name = HashMap::new();
        let mut sources: Vec<TokenSource> = Vec::new();
        for ic in &cfg.issuers {
            let mut issuer = build_issuer(ic, cfg, client.clone(), jwks_metrics.clone())?;
            for s in &ic.from {
                let idx = match sources.iter().position(|x| x == s) {
                    Some(i) => i,
                    None => {
                        sources.push(s.clone());
                        sources.len() - 1
                    }
                };
                issuer.sources.push(idx);
            }
            by_name.insert(ic.issuer.clone(), issuers.len());
            issuers.push(issuer);
        }
        let rejections = Family::<ReasonLabel, Counter>::default();
        registry.register("token_rejections", "Rejected bearer tokens by reason", rejections.clone());
        let cache_lookups = Family::<CacheLabel, Counter>::default();
        registry.register("token_cache_lookups", "Verified-token cache lookups by result", cache_lookups.clone());
        let cache = (cfg.token_cache.max_entries > 0).then(|| {
            // One statement each: the family's read guard must be gone before the next
            // `get_or_create` takes its write lock.
            let hits = cache_lookups.get_or_create(&CacheLabel { result: "hit" }).clone();
            let misses = cache_lookups.get_or_create(&CacheLabel { result: "miss" }).clone();
            let cache = moka::sync::Cache::builder()
                .max_capacity(cfg.token_cache.max_entries)
                .expire_after(UntilExp { max_ttl: cfg.token_cache.max_ttl })
                .build_with_hasher(ahash::RandomState::new());
            TokenCache { cache, hits, misses }
        });
        let negative_lookups = Family::<CacheLabel, Counter>::default();
        registry.register(
            "token_negative_cache_lookups",
            "Refused-token cache lookups by result (a hit is refused without parsing or verifying)",
            negative_lookups.clone(),
        );
        let negative = NegativeCache::new(cfg.negative_cache_ttl, cfg.negative_cache_capacity, negative_lookups);
        let deny_list = match &cfg.revocation.dir {
            Some(dir) => {
                let store = DenyListStore::new(cfg.revocation.max_entries, registry);
                store.load_dir(dir).map_err(|e| anyhow::anyhow!("authn.revocation.dir: {e}"))?;
                Some(Arc::new(store))
            }
            None => None,
        };
        let status_lists = StatusLists::new(&cfg.status_list, &cfg.issuers, registry);
        let verifications = Counter::default();
        registry.register(
            "token_verifications",
            "Tokens parsed and verified (not answered from the verified or refused-token cache)",
            verifications.clone(),
        );
        Ok(Self {
            issuers,
            by_name,
            sources,
            max_token_bytes: limits.max_token_bytes,
            cache,
            rejections,
            negative,
            verifications,
            deny_list,
            status_lists,
        })
    }

    /// The issuer of this name. A few are compared faster than the name is hashed; the last of
    /// a repeated name, as the map holds it.
    fn issuer_index(&self, name: &str) -> Option<usize> {
        if self.issuers.len() <= 8 {
            self.issuers.iter().rposition(|i| *i.name == *name)
        } else {
            self.by_name.get(name).copied()
        }
    }

    /// The deny-list store, when `authn.revocation.dir` is set (watched by the server).
    pub fn deny_list(&self) -> Option<&Arc<DenyListStore>> {
        self.deny_list.as_ref()
    }

    /// The revocation hook, run on every verified token (fresh or from the cache): deny-lists,
    /// then the token's status list. Never negatively cached.
    async fn check_revoked(&self, id: &JwtIdentity, issuer: usize, facts: &RevocationFacts) -> Result<(), AuthnError> {
        if let Some(store) = &self.deny_list
            && store.load().revokes(&id.issuer, &id.subject, facts.jti.as_deref(), facts.iat)
        {
            return Err(JwtError::Revoked.into());
        }
        if let Some(r) = &facts.status {
            let iss = self.issuers.get(issuer).ok_or(JwtError::UnknownIssuer)?;
            // Boxed for the same reason as the fresh verification: a fetch is a large future.
            Box::pin(self.status_lists.check(issuer, iss, r)).await?;
        }
        Ok(())
    }

    /// Header names tokens are read from.
    pub fn token_headers(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter_map(|s| match s {
                TokenSource::Header { header, .. } => Some(header.to_ascii_lowercase()),
                TokenSource::Cookie { .. } => None,
            })
            .collect()
    }

    /// Fetches every issuer's keys once, so the first request does not pay for it.
    pub async fn warm_up(&self) {
        for iss in &self.issuers {
            if !iss.keys.warm().await {
                tracing::warn!(issuer = %iss.name, "signing keys not available at start-up");
            }
        }
    }

    /// Number of tokens in the verified-token cache, after pending evictions have run.
    pub async fn cached_tokens(&self) -> u64 {
        match &self.cache {
            Some(c) => {
                c.cache.run_pending_tasks();
                c.cache.entry_count()
            }
            None => 0,
        }
    }

    /// `Ok(None)` when the request carries no token; an error for a present-but-bad one.
    /// `token_cache` is set to `hit` or `miss` when the verified-token cache was consulted.
    pub async fn authenticate(
        &self,
        req: &RequestView<'_>,
        token_cache: &mut Option<&'static str>,
    ) -> Result<Option<Arc<JwtIdentity>>, AuthnError> {
        if self.issuers.is_empty() {
            return Ok(None);
        }
        let res = match self.extract(req) {
            Ok(None) => return Ok(None),
            Ok(Some((token, source))) => self.verify_from(token, Some(source), token_cache).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(id) => Ok(Some(id)),
            Err(e) => {
                self.rejections.get_or_create(&ReasonLabel { reason: e.label() }).inc();
                // RFC 6750 §3.1: more than one token is `invalid_request` (400), not a bad token.
                Err(match e {
                    AuthnError::InvalidToken(JwtError::Duplicate) => {
                        AuthnError::DuplicateCredential(super::Credential::BearerToken)
                    }
                    e => e,
                })
            }
        }
    }

    /// What a token of `issuer` carrying these (already verified) claims would prove, mapped
    /// exactly as a verified token is; nothing is signed or checked but the claims the issuer
    /// requires. For `portcullis test`, whose cases state identities instead of tokens.
    pub fn identity_from_claims(
        &self,
        issuer: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<JwtIdentity, AuthnError> {
        let idx = self.issuer_index(issuer).ok_or(JwtError::UnknownIssuer)?;
        let iss = self.issuers.get(idx).ok_or(JwtError::UnknownIssuer)?;
        let expires_at = claims.get("exp").and_then(verify::numeric_date).unwrap_or(u64::MAX);
        Ok(iss.identity(Members::from(claims.clone()), expires_at, None, [0; 16])?)
    }

    /// Verifies one token from any source (or answers from the verified-token cache).
    pub async fn verify(&self, token: &str) -> Result<Arc<JwtIdentity>, AuthnError> {
        self.verify_from(token, None, &mut None).await
    }
}

#[cfg(test)]
impl JwtIdentity {
    /// An identity as if a token had verified (for authorization tests).
    pub(crate) fn for_tests(issuer: &str, subject: &str, groups: &[&str], claims: &[(&str, &str)]) -> Self {
        JwtIdentity {
            issuer: issuer.into(),
            subject: subject.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            claims: claims.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            headers: Vec::new(),
            subject_value: Bytes::copy_from_slice(subject.as_bytes()),
            issuer_value: Bytes::copy_from_slice(issuer.as_bytes()),
            scopes: Vec::new(),
            audiences: Vec::new(),
            expires_at: u64::MAX,
            kid: None,
            key_fingerprint: [0; 16],
            upstream: Default::default(),
        }
    }
}
