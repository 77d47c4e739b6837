//! One issuer's key set: served while fresh, refreshed in the background near the end of its
//! lifetime, kept through provider outages until `max_stale` (its `serve_until`), and refreshed
//! on an unknown `kid` at most once per interval.
//!
//! The set is one atomically swapped pointer, not a cache: every cached-token check reads it
//! (a load and one clock comparison), and a single-entry moka cache cost a hash, a read
//! record and two clock reads there. Fetches are serialized by `refresh_lock`, which also
//! makes concurrent first loads share one fetch.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;

use super::{IssuerLabel, IssuerResult, JwksError, JwksMetrics, KeyLookupError, KeySet, KeySource, VerifyKey};
use crate::config::JwksConfig;

/// The keys of one issuer.
pub struct IssuerKeys {
    pub(super) issuer: String,
    pub(super) source: KeySource,
    pub(super) settings: JwksConfig,
    pub(super) client: reqwest::Client,
    pub(super) allow_insecure_http: bool,
    /// The last good set; served only until its `serve_until`.
    pub(super) held: ArcSwapOption<KeySet>,
    pub(super) discovered_uri: Mutex<Option<String>>,
    pub(super) refresh_lock: tokio::sync::Mutex<()>,
    pub(super) last_attempt: Mutex<Option<Instant>>,
    pub(super) background: AtomicBool,
    pub(super) generation: AtomicU64,
    pub(super) metrics: JwksMetrics,
    /// How long an unknown-`kid` lookup waits for a refresh already in flight.
    pub(super) unknown_kid_wait: Duration,
    /// The `hit` lookup counter, resolved at the first hit (so the series appears when it did
    /// before) and then shared: every fresh token's key lookup counts one, and resolving it
    /// per lookup copied the issuer name and hashed the label set each time.
    pub(super) hits: std::sync::OnceLock<Counter>,
}

/// What an unknown-`kid` refresh came to.
enum Refresh {
    /// A set newer than the one the caller saw (fetched now, or by another caller meanwhile).
    Newer(Arc<KeySet>),
    /// Not tried: the last attempt was less than `unknown_kid_refresh_interval` ago.
    RateLimited,
    /// Tried and failed, or another caller's refresh did not finish within `unknown_kid_wait`:
    /// whether the `kid` exists could not be learned.
    Failed,
}

impl IssuerKeys {
    /// With the default `authn.unknown_kid_wait`.
    pub fn new(
        issuer: String,
        source: KeySource,
        settings: JwksConfig,
        client: reqwest::Client,
        allow_insecure_http: bool,
        metrics: JwksMetrics,
    ) -> Arc<Self> {
        let wait = crate::config::AuthnConfig::default().unknown_kid_wait;
        Self::with_unknown_kid_wait(issuer, source, settings, client, allow_insecure_http, metrics, wait)
    }

    pub fn with_unknown_kid_wait(
        issuer: String,
        source: KeySource,
        settings: JwksConfig,
        client: reqwest::Client,
        allow_insecure_http: bool,
        metrics: JwksMetrics,
        unknown_kid_wait: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            issuer,
            source,
            settings,
            client,
            allow_insecure_http,
            held: ArcSwapOption::empty(),
            discovered_uri: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            background: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            metrics,
            unknown_kid_wait,
            hits: std::sync::OnceLock::new(),
        })
    }

    /// The held set if it may still be served at `now`; past its `serve_until` it is as if
    /// none were held.
    fn live(&self, now: Instant) -> Option<Arc<KeySet>> {
        self.held.load_full().filter(|s| now < s.serve_until)
    }

    /// The key set currently served, without fetching.
    pub async fn current(&self) -> Option<Arc<KeySet>> {
        self.live(Instant::now())
    }

    /// The key set currently served, starting a background refresh when one is due. Used by
    /// the verified-token cache, so that tokens answered from it alone still keep keys fresh
    /// (and so notice a removed key) instead of riding the old set until `max_stale`.
    pub async fn serving(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        let now = Instant::now();
        let set = self.live(now)?;
        if set.refresh_due(now) {
            self.spawn_background_refresh();
        }
        Some(set)
    }

    /// Loads the key set if nothing is cached yet (no unknown-kid refresh). True if keys are held.
    pub async fn warm(self: &Arc<Self>) -> bool {
        self.load().await.is_some()
    }

    fn count_lookup(&self, result: &'static str) {
        self.lookup_counter(result).inc();
    }

    fn lookup_counter(&self, result: &'static str) -> Counter {
        self.metrics.lookups.get_or_create(&IssuerResult { issuer: self.issuer.clone(), result }).clone()
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
                self.hits.get_or_init(|| self.lookup_counter("hit")).inc();
            }
            return Ok(k.clone());
        }
        if cached {
            self.count_lookup("miss");
        }
        // Unknown kid: maybe the issuer rotated. At most one fetch at a time, rate-limited.
        // When the refresh cannot tell (it failed, or one in flight is slow), the answer is
        // "unavailable" (503, retry), not "unknown kid" (401): the kid may well exist.
        match self.refresh_after(set.generation).await {
            Refresh::Newer(newer) => newer.find(kid).cloned().ok_or(KeyLookupError::UnknownKid),
            Refresh::RateLimited => Err(KeyLookupError::UnknownKid),
            Refresh::Failed => Err(KeyLookupError::Unavailable),
        }
    }

    /// The held set, or one fetch shared by every concurrent caller when none may be served:
    /// callers queue on `refresh_lock` and the first fetches; the others then find its set, or,
    /// after a failed attempt, fail fast until the interval has passed.
    async fn load(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        if let Some(s) = self.live(Instant::now()) {
            return Some(s);
        }
        let _guard = self.refresh_lock.lock().await;
        if let Some(s) = self.live(Instant::now()) {
            return Some(s);
        }
        if !self.attempt_allowed() {
            return None;
        }
        match self.fetch().await {
            Ok(set) => {
                let set = Arc::new(set);
                self.held.store(Some(set.clone()));
                Some(set)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "no signing keys available");
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

    /// Refreshes unless another caller already did since `seen_generation`. A refresh already
    /// in flight (another caller's, or the background one) is waited for at most
    /// `unknown_kid_wait`, so a slow provider cannot park every unknown-kid request for a whole
    /// `fetch_timeout`; the caller that starts a fetch waits for it (bounded by that timeout).
    async fn refresh_after(&self, seen_generation: u64) -> Refresh {
        let _guard = match self.refresh_lock.try_lock() {
            Ok(g) => g,
            Err(_) => match tokio::time::timeout(self.unknown_kid_wait, self.refresh_lock.lock()).await {
                Ok(g) => g,
                Err(_) => {
                    self.count_lookup("refresh_busy");
                    return Refresh::Failed;
                }
            },
        };
        if let Some(cur) = self.live(Instant::now())
            && cur.generation != seen_generation
        {
            return Refresh::Newer(cur);
        }
        if !self.attempt_allowed() {
            return Refresh::RateLimited;
        }
        match self.refresh_now().await {
            Some(set) => Refresh::Newer(set),
            None => Refresh::Failed,
        }
    }

    async fn refresh_now(&self) -> Option<Arc<KeySet>> {
        match self.fetch().await {
            Ok(set) => {
                let set = Arc::new(set);
                self.held.store(Some(set.clone()));
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
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::Algorithm;

    use super::*;

    fn jwks(keys: &[(&str, &Ed25519KeyPair)]) -> String {
        let keys: Vec<String> = keys
            .iter()
            .map(|(kid, k)| {
                let x = URL_SAFE_NO_PAD.encode(k.public_key().as_ref());
                format!(r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"{x}"}}"#)
            })
            .collect();
        format!(r#"{{"keys":[{}]}}"#, keys.join(","))
    }

    /// A key rotated out of the JWKS takes its parsed verifiers with it: once the new set is
    /// served, nothing holds the old key, and its `kid` is unknown.
    #[tokio::test]
    async fn a_rotated_out_key_and_its_parsed_verifiers_are_gone() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("jwks.json");
        let (old, new) = (Ed25519KeyPair::generate().expect("key"), Ed25519KeyPair::generate().expect("key"));
        std::fs::write(&path, jwks(&[("old", &old)])).expect("write");
        // Every unknown kid may refresh at once: the test rotates without waiting.
        let settings = JwksConfig { unknown_kid_refresh_interval: Duration::ZERO, ..JwksConfig::default() };
        let keys = IssuerKeys::new(
            "https://issuer.example".into(),
            KeySource::File(path.clone()),
            settings,
            reqwest::Client::new(),
            false,
            JwksMetrics::default(),
        );
        let msg = b"header.payload";
        let old_key = keys.key_for(Some("old")).await.expect("old key served");
        assert!(old_key.verifiers.verify(Algorithm::EdDSA, msg, old.sign(msg).as_ref()));
        let old_weak = Arc::downgrade(&old_key);
        drop(old_key);

        std::fs::write(&path, jwks(&[("new", &new)])).expect("rotate");
        let new_key = keys.key_for(Some("new")).await.expect("an unknown kid refreshes the set");
        assert!(new_key.verifiers.verify(Algorithm::EdDSA, msg, new.sign(msg).as_ref()));
        assert!(!new_key.verifiers.verify(Algorithm::EdDSA, msg, old.sign(msg).as_ref()), "old signature, new key");
        assert_eq!(keys.key_for(Some("old")).await.err(), Some(KeyLookupError::UnknownKid));
        assert!(old_weak.upgrade().is_none(), "the rotated-out key (and its parsed verifiers) is still held");
    }
}
