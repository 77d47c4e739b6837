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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use moka::Expiry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};

use crate::config::JwksConfig;

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
    #[error("{origin} holds no usable signing key")]
    NoUsableKeys { origin: String },
    #[error("discovery document names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("not retrying yet: the last attempt failed less than the refresh interval ago")]
    Backoff,
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
            JwksError::Backoff => "backoff",
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
    pub key: DecodingKey,
    pub family: AlgorithmFamily,
    /// The JWK's `alg`, if it pinned one.
    pub alg: Option<Algorithm>,
    /// Digest of the key material, so a cached token can tell its key is still the same key.
    pub fingerprint: [u8; 16],
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
            "Signing-key lookups by issuer and result: hit (served from the cached key set) or miss (needed a fetch)",
            m.lookups.clone(),
        );
        m
    }
}

struct ServeUntil;

impl Expiry<(), Arc<KeySet>> for ServeUntil {
    fn expire_after_create(&self, _: &(), v: &Arc<KeySet>, now: Instant) -> Option<Duration> {
        Some(v.serve_until.saturating_duration_since(now))
    }
    fn expire_after_update(&self, _: &(), v: &Arc<KeySet>, now: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(v.serve_until.saturating_duration_since(now))
    }
}

/// The keys of one issuer.
pub struct IssuerKeys {
    issuer: String,
    source: KeySource,
    settings: JwksConfig,
    client: reqwest::Client,
    allow_insecure_http: bool,
    cache: moka::future::Cache<(), Arc<KeySet>>,
    discovered_uri: Mutex<Option<String>>,
    refresh_lock: tokio::sync::Mutex<()>,
    last_attempt: Mutex<Option<Instant>>,
    background: AtomicBool,
    generation: AtomicU64,
    metrics: JwksMetrics,
}

impl IssuerKeys {
    pub fn new(
        issuer: String,
        source: KeySource,
        settings: JwksConfig,
        client: reqwest::Client,
        allow_insecure_http: bool,
        metrics: JwksMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            issuer,
            source,
            settings,
            client,
            allow_insecure_http,
            cache: moka::future::Cache::builder().max_capacity(1).expire_after(ServeUntil).build(),
            discovered_uri: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            background: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            metrics,
        })
    }

    /// The key set currently served, without fetching.
    pub async fn current(&self) -> Option<Arc<KeySet>> {
        self.cache.get(&()).await
    }

    /// The key set currently served, starting a background refresh when one is due. Used by
    /// the verified-token cache, so that tokens answered from it alone still keep keys fresh
    /// (and so notice a removed key) instead of riding the old set until `max_stale`.
    pub async fn serving(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        let set = self.cache.get(&()).await?;
        if set.refresh_due(Instant::now()) {
            self.spawn_background_refresh();
        }
        Some(set)
    }

    /// Loads the key set if nothing is cached yet (no unknown-kid refresh). True if keys are held.
    pub async fn warm(self: &Arc<Self>) -> bool {
        self.load().await.is_some()
    }

    fn count_lookup(&self, result: &'static str) {
        self.metrics.lookups.get_or_create(&IssuerResult { issuer: self.issuer.clone(), result }).inc();
    }

    /// Finds the key for a token's `kid`, fetching or refreshing as the rules above allow.
    pub async fn key_for(self: &Arc<Self>, kid: Option<&str>) -> Result<Arc<VerifyKey>, KeyLookupError> {
        let (set, cached) = match self.serving().await {
            Some(set) => (set, true),
            None => {
                self.count_lookup("miss");
                (self.load().await.ok_or(KeyLookupError::Unavailable)?, false)
            }
        };
        if let Some(k) = set.find(kid) {
            if cached {
                self.count_lookup("hit");
            }
            return Ok(k.clone());
        }
        if cached {
            self.count_lookup("miss");
        }
        // Unknown kid: maybe the issuer rotated. At most one fetch at a time, rate-limited.
        match self.refresh_after(set.generation).await {
            Some(newer) => newer.find(kid).cloned().ok_or(KeyLookupError::UnknownKid),
            None => Err(KeyLookupError::UnknownKid),
        }
    }

    /// The cached set, or one fetch shared by every concurrent caller when nothing is cached.
    async fn load(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        if let Some(s) = self.cache.get(&()).await {
            return Some(s);
        }
        let this = self.clone();
        let res = self
            .cache
            .try_get_with((), async move {
                // Concurrent callers share this one future; after a failed attempt, later ones
                // fail fast until the interval has passed.
                if !this.attempt_allowed() {
                    return Err(JwksError::Backoff);
                }
                this.fetch().await.map(Arc::new)
            })
            .await;
        match res {
            Ok(s) => Some(s),
            Err(e) => {
                if !matches!(*e, JwksError::Backoff) {
                    tracing::warn!(issuer = %self.issuer, error = %e, "no signing keys available");
                }
                None
            }
        }
    }

    fn attempt_allowed(&self) -> bool {
        let Ok(mut g) = self.last_attempt.lock() else { return false };
        let now = Instant::now();
        match *g {
            Some(t) if now.duration_since(t) < self.settings.unknown_kid_refresh_interval => false,
            _ => {
                *g = Some(now);
                true
            }
        }
    }

    /// Refreshes unless another caller already did since `seen_generation`. Returns the newer
    /// set, or `None` if no newer set could be had (rate-limited or the fetch failed).
    async fn refresh_after(&self, seen_generation: u64) -> Option<Arc<KeySet>> {
        let _guard = self.refresh_lock.lock().await;
        if let Some(cur) = self.cache.get(&()).await
            && cur.generation != seen_generation
        {
            return Some(cur);
        }
        if !self.attempt_allowed() {
            return None;
        }
        self.refresh_now().await
    }

    async fn refresh_now(&self) -> Option<Arc<KeySet>> {
        match self.fetch().await {
            Ok(set) => {
                let set = Arc::new(set);
                self.cache.insert((), set.clone()).await;
                Some(set)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed; keeping last good keys");
                None
            }
        }
    }

    fn spawn_background_refresh(self: &Arc<Self>) {
        if self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = this.refresh_lock.lock().await;
            if this.attempt_allowed() {
                this.refresh_now().await;
            }
            this.background.store(false, Ordering::Release);
        });
    }

    /// Fetches and parses the key set once. Records the result in metrics.
    pub async fn fetch(&self) -> Result<KeySet, JwksError> {
        let res = self.fetch_inner().await;
        if res.is_err()
            && matches!(self.source, KeySource::Discovery { .. })
            && let Ok(mut g) = self.discovered_uri.lock()
        {
            // The provider may have moved its JWKS; discover again on the next attempt.
            *g = None;
        }
        let result = match &res {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics.fetches.get_or_create(&IssuerResult { issuer: self.issuer.clone(), result }).inc();
        if let Ok(set) = &res {
            self.metrics.keys.get_or_create(&IssuerLabel { issuer: self.issuer.clone() }).set(set.len() as i64);
            tracing::info!(issuer = %self.issuer, keys = set.len(), generation = set.generation, "signing keys loaded");
        }
        res
    }

    async fn fetch_inner(&self) -> Result<KeySet, JwksError> {
        let ignore_kid = matches!(self.source, KeySource::Hmac(_));
        let (keys, ttl) = match &self.source {
            KeySource::Hmac(secret) => {
                let key = VerifyKey {
                    kid: None,
                    key: DecodingKey::from_secret(secret),
                    family: AlgorithmFamily::Hmac,
                    alg: None,
                    fingerprint: digest16(secret),
                };
                (vec![Arc::new(key)], self.settings.max_ttl)
            }
            KeySource::File(path) => {
                let body = read_bounded(path, self.settings.max_response_bytes).await?;
                (parse_jwks(&body, &path.display().to_string())?, self.settings.default_ttl)
            }
            KeySource::Uri(uri) => self.fetch_jwks(uri).await?,
            KeySource::Discovery { issuer } => {
                let known = self.discovered_uri.lock().ok().and_then(|g| g.clone());
                let uri = match known {
                    Some(u) => u,
                    None => {
                        let u = self.discover(issuer).await?;
                        if let Ok(mut g) = self.discovered_uri.lock() {
                            *g = Some(u.clone());
                        }
                        u
                    }
                };
                self.fetch_jwks(&uri).await?
            }
        };
        let now = Instant::now();
        let fresh_until = now + ttl;
        Ok(KeySet {
            keys,
            ignore_kid,
            generation: self.generation.fetch_add(1, Ordering::AcqRel) + 1,
            fetched_at: now,
            fresh_until,
            serve_until: fresh_until + self.settings.max_stale,
        })
    }

    async fn discover(&self, issuer: &str) -> Result<String, JwksError> {
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let (body, _) = self.get_bounded(&url).await?;
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| JwksError::Parse {
            origin: url.clone(),
            what: "discovery document",
            message: e.to_string(),
        })?;
        // OIDC Discovery §4.3: the document must name exactly the issuer we asked about.
        if d.issuer != issuer {
            return Err(JwksError::IssuerMismatch { expected: issuer.to_owned(), found: d.issuer });
        }
        Ok(d.jwks_uri)
    }

    async fn fetch_jwks(&self, uri: &str) -> Result<(Vec<Arc<VerifyKey>>, Duration), JwksError> {
        let (body, max_age) = self.get_bounded(uri).await?;
        let keys = parse_jwks(&body, uri)?;
        let s = &self.settings;
        let ttl = max_age.unwrap_or(s.default_ttl).clamp(s.min_ttl, s.max_ttl);
        Ok((keys, ttl))
    }

    async fn get_bounded(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), JwksError> {
        // Checked here, not only in config: a discovered `jwks_uri` comes from the network.
        let parsed =
            reqwest::Url::parse(url).map_err(|e| JwksError::Fetch { url: url.to_owned(), message: e.to_string() })?;
        if !crate::config::fetchable_url(&parsed, self.allow_insecure_http) {
            return Err(JwksError::InsecureUrl { url: url.to_owned() });
        }
        let limit = self.settings.max_response_bytes;
        let fetch_err = |e: reqwest::Error| {
            if e.is_timeout() {
                JwksError::Timeout { url: url.to_owned() }
            } else if e.is_redirect() {
                JwksError::Redirect { url: url.to_owned(), message: error_chain(&e) }
            } else {
                JwksError::Fetch { url: url.to_owned(), message: e.to_string() }
            }
        };
        let fut = async {
            let mut resp = self.client.get(parsed).send().await.map_err(fetch_err)?;
            if !resp.status().is_success() {
                return Err(JwksError::Status { url: url.to_owned(), status: resp.status().as_u16() });
            }
            if resp.content_length().is_some_and(|n| n as usize > limit) {
                return Err(JwksError::TooLarge { url: url.to_owned(), limit });
            }
            let max_age = resp
                .headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age);
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(fetch_err)? {
                if body.len() + chunk.len() > limit {
                    return Err(JwksError::TooLarge { url: url.to_owned(), limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok((body, max_age))
        };
        // The timeout covers the whole exchange, body included, so a trickling server cannot stall us.
        tokio::time::timeout(self.settings.fetch_timeout, fut)
            .await
            .unwrap_or_else(|_| Err(JwksError::Timeout { url: url.to_owned() }))
    }
}

/// The redirect policy for discovery and JWKS fetches: same origin as the first URL only, at most
/// `MAX_REDIRECTS` hops. Anything else is an error, so the fetch fails closed.
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.error("redirect without an initial URL");
        };
        if attempt.url().origin() != first.origin() {
            let msg = format!("cross-origin redirect to {}", attempt.url().origin().ascii_serialization());
            return attempt.error(msg);
        }
        // `previous` holds the initial URL plus every hop already followed.
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        attempt.follow()
    })
}

/// Most same-origin redirects followed in one discovery or JWKS fetch.
pub const MAX_REDIRECTS: usize = 3;

/// An error with its sources, so "cross-origin redirect" is visible in the log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn read_bounded(path: &PathBuf, limit: usize) -> Result<Vec<u8>, JwksError> {
    let read_err = |e: std::io::Error| JwksError::Read { path: path.clone(), message: e.to_string() };
    let meta = tokio::fs::metadata(path).await.map_err(read_err)?;
    if meta.len() as usize > limit {
        return Err(JwksError::TooLarge { url: path.display().to_string(), limit });
    }
    tokio::fs::read(path).await.map_err(read_err)
}

/// `max-age` from a `Cache-Control` value; `no-store`/`no-cache` mean "as short as allowed".
pub fn parse_max_age(v: &str) -> Option<Duration> {
    let mut out = None;
    for d in v.split(',') {
        let d = d.trim().to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            out = n.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    out
}

/// Parses a JWKS, keeping only asymmetric signature keys; a bad key is skipped, not fatal.
pub fn parse_jwks(body: &[u8], origin: &str) -> Result<Vec<Arc<VerifyKey>>, JwksError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| JwksError::Parse {
        origin: origin.to_owned(),
        what: "JWKS",
        message: e.to_string(),
    })?;
    let mut keys = Vec::with_capacity(raw.keys.len());
    for v in raw.keys {
        let fp = digest16(v.to_string().as_bytes());
        let jwk: Jwk = match serde_json::from_value(v) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(origin, error = %e, "skipping unparseable JWK");
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            // Symmetric keys never come from a JWKS: that is how HMAC-with-a-public-key attacks work.
            _ => continue,
        };
        let alg = match jwk.common.key_algorithm.map(Algorithm::try_from) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            tracing::warn!(origin, kid = ?jwk.common.key_id, "skipping JWK with unusable key material");
            continue;
        };
        keys.push(Arc::new(VerifyKey { kid: jwk.common.key_id.clone(), key, family, alg, fingerprint: fp }));
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys { origin: origin.to_owned() });
    }
    Ok(keys)
}

fn digest16(b: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(b);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read() {
        assert_eq!(parse_max_age("public, max-age=300"), Some(Duration::from_secs(300)));
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
    }

    #[test]
    fn symmetric_and_encryption_keys_are_dropped() {
        let body = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"e","use":"enc"}]}"#;
        assert!(matches!(parse_jwks(body, "t"), Err(JwksError::NoUsableKeys { .. })));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_jwks(b"<html>", "t").is_err());
    }
}
