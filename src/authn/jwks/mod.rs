//! Signing keys per issuer: fetched from a JWKS (explicit URI, OIDC discovery, or a file), cached
//! in moka with a freshness lifetime taken from `Cache-Control` and bounded by config.
//!
//! - A key set is *fresh* until `fresh_until`; past 80% of that a request triggers one background
//!   refresh. It keeps *serving* until `fresh_until + max_stale` (moka evicts it then), so a
//!   provider outage is ridden out with the last good keys, and then fails closed.
//! - An unknown `kid` triggers at most one refresh at a time (concurrent callers wait on the same
//!   fetch) and no more often than `unknown_kid_refresh_interval`, so forged kids cannot hammer
//!   the provider.
//! - Fetches have a timeout and a response-size bound; a key that vanishes from the JWKS is gone
//!   from the next key set.
//! - Every URL fetched for an issuer must be `https://` (or `http://` with the issuer's
//!   `allow_insecure_http`), and a redirect is followed only to the same origin (scheme, host,
//!   port), at most three hops: a JWKS answer from anywhere else would let that host mint tokens.
//! - With nothing cached (first start, or past `max_stale`), a failed fetch is not retried more
//!   often than `unknown_kid_refresh_interval` either: callers get "unavailable" at once instead
//!   of each waiting a full fetch timeout on a provider that is down.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;

mod cache;
mod fetch;
mod verifier;

pub use cache::IssuerKeys;
pub(crate) use fetch::http_client;
pub use fetch::{MAX_REDIRECTS, parse_jwks, parse_max_age, same_origin_redirects};
pub use verifier::Verifiers;

/// Why keys could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwksError {
    #[error("fetch of {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("fetch of {url} timed out")]
    Timeout { url: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} response exceeds {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{origin} is not a valid {what}: {message}")]
    Parse { origin: String, what: &'static str, message: String },
    #[error("{origin} holds {count} keys, more than the {limit} allowed (`authn.jwks.max_keys`)")]
    TooManyKeys { origin: String, count: usize, limit: usize },
    #[error("{origin} holds no usable signing key")]
    NoUsableKeys { origin: String },
    #[error("discovery document names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("fetch of {url} refused: {message}")]
    Redirect { url: String, message: String },
    #[error("{url} is not an https URL (set `allow_insecure_http` on the issuer to allow http)")]
    InsecureUrl { url: String },
}

impl JwksError {
    fn label(&self) -> &'static str {
        match self {
            JwksError::Fetch { .. } | JwksError::Read { .. } => "unreachable",
            JwksError::Timeout { .. } => "timeout",
            JwksError::Status { .. } => "bad_status",
            JwksError::TooLarge { .. } => "too_large",
            JwksError::Parse { .. } | JwksError::IssuerMismatch { .. } => "invalid",
            JwksError::NoUsableKeys { .. } => "no_keys",
            JwksError::TooManyKeys { .. } => "too_many_keys",
            JwksError::Redirect { .. } => "redirect_refused",
            JwksError::InsecureUrl { .. } => "insecure_url",
        }
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// OIDC discovery at `<issuer>/.well-known/openid-configuration`.
    Discovery { issuer: String },
    /// An explicit JWKS URL.
    Uri(String),
    /// A JWKS file, re-read on every refresh.
    File(PathBuf),
    /// An HMAC secret (only for issuers configured with one).
    Hmac(Arc<Vec<u8>>),
}

/// One verification key.
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The key as jsonwebtoken takes it (status-list tokens are decoded with it).
    pub key: DecodingKey,
    /// The same key, parsed once per algorithm it may verify: the fresh-token path's verifier.
    pub verifiers: Verifiers,
    pub family: AlgorithmFamily,
    /// The JWK's `alg`, if it pinned one.
    pub alg: Option<Algorithm>,
    /// Digest of the key material, so a cached token can tell its key is still the same key.
    pub fingerprint: [u8; 16],
}

impl VerifyKey {
    /// Builds the key's verifiers once, here, rather than on every signature check.
    pub fn new(
        kid: Option<String>,
        key: DecodingKey,
        family: AlgorithmFamily,
        alg: Option<Algorithm>,
        fingerprint: [u8; 16],
    ) -> Self {
        let verifiers = Verifiers::new(&key, alg);
        Self { kid, key, verifiers, family, alg, fingerprint }
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish()
    }
}

/// An immutable key set as fetched at one moment.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    /// An HMAC issuer has exactly one secret, so a token's `kid` cannot select anything.
    ignore_kid: bool,
    pub generation: u64,
    pub fetched_at: Instant,
    pub fresh_until: Instant,
    serve_until: Instant,
}

impl KeySet {
    /// Key for a `kid`; without a `kid`, only an unambiguous single key matches.
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<VerifyKey>> {
        if self.ignore_kid {
            return self.keys.first();
        }
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn refresh_due(&self, now: Instant) -> bool {
        let life = self.fresh_until.saturating_duration_since(self.fetched_at);
        now >= self.fetched_at + life.mul_f32(0.8)
    }
}

/// What a key lookup can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookupError {
    /// No key set could be had at all (provider unreachable and nothing cached).
    Unavailable,
    /// Keys are available but none matches the token's `kid`.
    UnknownKid,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerResult {
    issuer: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabel {
    issuer: String,
}

/// JWKS metrics, shared by every issuer.
#[derive(Clone, Default)]
pub struct JwksMetrics {
    fetches: Family<IssuerResult, Counter>,
    keys: Family<IssuerLabel, Gauge>,
    lookups: Family<IssuerResult, Counter>,
}

impl JwksMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("jwks_fetches", "JWKS and discovery fetches by issuer and result", m.fetches.clone());
        registry.register("jwks_keys", "Usable signing keys per issuer", m.keys.clone());
        registry.register(
            "jwks_key_lookups",
            "Signing-key lookups by issuer and result: hit (served from the cached key set), miss (needed a fetch) or \
             refresh_busy (an unknown kid waited `unknown_kid_wait` for a refresh in flight, then got 503)",
            m.lookups.clone(),
        );
        m
    }
}
