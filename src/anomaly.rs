//! Attack signals and pre-authentication throttling.
//!
//! Failed authentications are counted in two bounded heavy-hitters trackers (space-saving: a
//! fixed number of entries whatever the number of keys; a new key evicts the entry with the
//! oldest window and then the lowest count, and inherits that count as its possible error):
//! one keyed by the request's *source* (mTLS peer, source address, or `x-forwarded-for` behind
//! trusted hops) and one by the *claimed* identity (token `iss`/`sub` read without
//! verification, API-key digest prefix). Claimed identities are signals only: nothing is ever
//! decided on them. Counts live in fixed windows aligned on the tracker's start.
//!
//! When `authn.throttle.enabled`, a source whose guaranteed count (count minus possible error,
//! so an evicted-and-reused entry never locks out a newcomer) reached `max_failures` in the
//! current window is answered 429 before any signature verification, until the window ends.
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::config::{ThrottleConfig, ThrottleKey};
use crate::request::RequestView;

/// Distinct reasons kept per entry; more are folded into `other`.
const MAX_REASONS: usize = 4;
/// Longest key kept (claimed identities and peer ids are attacker-chosen).
const MAX_KEY_BYTES: usize = 256;
/// WARN lines allowed per [`WARN_PERIOD`]; further crossings are counted and reported later.
const WARN_BURST: u32 = 10;
const WARN_PERIOD: Duration = Duration::from_secs(10);
/// Largest token payload (base64url characters) whose `iss`/`sub` are read for the tracker.
const MAX_PAYLOAD_CHARS: usize = 4096;
/// Most entries `/anomalies` returns.
pub const MAX_TOP: usize = 1000;

/// Which tracker a key belongs to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Source,
    Identity,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Identity => "identity",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Failure reasons of one entry: a few labels and the rest.
#[derive(Clone, Debug, Default)]
struct Reasons {
    top: [(&'static str, u32); MAX_REASONS],
    other: u32,
}

impl Reasons {
    fn add(&mut self, reason: &'static str) {
        for slot in self.top.iter_mut() {
            if slot.0 == reason {
                slot.1 = slot.1.saturating_add(1);
                return;
            }
            if slot.0.is_empty() {
                *slot = (reason, 1);
                return;
            }
        }
        self.other = self.other.saturating_add(1);
    }
}

#[derive(Debug)]
struct Slot {
    key: Box<str>,
    /// The window `count` belongs to.
    window: u64,
    count: u32,
    /// How much of `count` may belong to evicted keys (space-saving's overestimate).
    error: u32,
    reasons: Reasons,
    first_seen_ms: u64,
    last_seen_ms: u64,
    /// Crossed the threshold in `window` (so the crossing is reported once).
    over: bool,
}

impl Slot {
    fn guaranteed(&self) -> u32 {
        self.count - self.error
    }
}

/// One bounded space-saving tracker.
#[derive(Debug)]
pub struct Tracker {
    capacity: usize,
    threshold: u32,
    index: HashMap<Box<str>, u32>,
    slots: Vec<Slot>,
    /// (window, count, slot): the first element is the entry a new key evicts.
    order: BTreeSet<(u64, u32, u32)>,
    /// Entries over the threshold in window `over_window`.
    over: usize,
    over_window: u64,
}

impl Tracker {
    pub fn new(capacity: usize, threshold: u32) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        Self {
            capacity,
            threshold: threshold.max(1),
            index: HashMap::new(),
            slots: Vec::new(),
            order: BTreeSet::new(),
            over: 0,
            over_window: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Counts one failure of `key` in `window`; true when this failure made the key cross the
    /// threshold (once per key and window).
    pub fn record(&mut self, key: &str, reason: &'static str, window: u64, now_ms: u64) -> bool {
        let i = match self.index.get(key) {
            Some(&i) => {
                let s = &mut self.slots[i as usize];
                self.order.remove(&(s.window, s.count, i));
                if s.window != window {
                    // A new window: the old counts cooled down.
                    *s = Slot {
                        key: std::mem::take(&mut s.key),
                        first_seen_ms: s.first_seen_ms,
                        ..fresh(window, 0, now_ms)
                    };
                }
                i
            }
            None if self.slots.len() < self.capacity => {
                let i = self.slots.len() as u32;
                let key: Box<str> = key.into();
                self.slots.push(Slot { key: key.clone(), ..fresh(window, 0, now_ms) });
                self.index.insert(key, i);
                i
            }
            None => {
                let Some((w, c, i)) = self.order.pop_first() else { return false };
                let s = &mut self.slots[i as usize];
                self.index.remove(&s.key);
                if s.over && s.window == self.over_window {
                    self.over = self.over.saturating_sub(1);
                }
                // Space-saving: the newcomer may own the evicted count, no more.
                let inherited = if w == window { c } else { 0 };
                let key: Box<str> = key.into();
                *s = Slot { key: key.clone(), ..fresh(window, inherited, now_ms) };
                self.index.insert(key, i);
                i
            }
        };
        let s = &mut self.slots[i as usize];
        s.count = s.count.saturating_add(1);
        s.reasons.add(reason);
        s.last_seen_ms = now_ms;
        self.order.insert((s.window, s.count, i));
        if !s.over && s.guaranteed() >= self.threshold {
            s.over = true;
            if self.over_window != window {
                self.over_window = window;
                self.over = 0;
            }
            self.over += 1;
            return true;
        }
        false
    }

    /// Whether `key` is over the threshold in `window`.
    pub fn is_over(&self, key: &str, window: u64) -> bool {
        self.index.get(key).is_some_and(|&i| {
            let s = &self.slots[i as usize];
            s.window == window && s.guaranteed() >= self.threshold
        })
    }

    /// Keys over the threshold in `window`.
    pub fn over_count(&self, window: u64) -> usize {
        if self.over_window == window { self.over } else { 0 }
    }

    /// The `n` heaviest entries: current window first, then by count.
    fn top(&self, n: usize, kind: Kind, window: u64, unix_start_ms: u64) -> Vec<Entry> {
        self.order
            .iter()
            .rev()
            .take(n)
            .map(|&(_, _, i)| {
                let s = &self.slots[i as usize];
                let mut reasons: Vec<(&'static str, u32)> =
                    s.reasons.top.iter().filter(|(r, _)| !r.is_empty()).copied().collect();
                if s.reasons.other > 0 {
                    reasons.push(("other", s.reasons.other));
                }
                Entry {
                    kind,
                    key: s.key.to_string(),
                    current_window: s.window == window,
                    count: s.count,
                    max_overestimate: s.error,
                    over_threshold: s.window == window && s.guaranteed() >= self.threshold,
                    reasons: reasons.into_iter().map(|(r, n)| (r.to_owned(), n)).collect(),
                    first_seen: rfc3339(unix_start_ms + s.first_seen_ms),
                    last_seen: rfc3339(unix_start_ms + s.last_seen_ms),
                }
            })
            .collect()
    }
}

fn fresh(window: u64, inherited: u32, now_ms: u64) -> Slot {
    Slot {
        key: Box::from(""),
        window,
        count: inherited,
        error: inherited,
        reasons: Reasons::default(),
        first_seen_ms: now_ms,
        last_seen_ms: now_ms,
        over: false,
    }
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// One `/anomalies` row.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub kind: Kind,
    pub key: String,
    /// Counted in the current window (older entries are kept until evicted).
    pub current_window: bool,
    pub count: u32,
    /// Space-saving's bound on how much of `count` may belong to evicted keys.
    pub max_overestimate: u32,
    pub over_threshold: bool,
    pub reasons: std::collections::BTreeMap<String, u32>,
    pub first_seen: String,
    pub last_seen: String,
}

/// The `/anomalies` document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub window_seconds: u64,
    pub threshold: u32,
    pub throttling: bool,
    pub sources_over_threshold: usize,
    pub identities_over_threshold: usize,
    pub sources: Vec<Entry>,
    pub identities: Vec<Entry>,
}

/// Rate limit on the WARN lines themselves.
#[derive(Debug, Default)]
struct WarnGate {
    period: u64,
    emitted: u32,
    suppressed: u64,
}

impl WarnGate {
    /// `Some(suppressed so far)` when a line may be written now.
    fn admit(&mut self, now_ms: u64) -> Option<u64> {
        let period = now_ms / WARN_PERIOD.as_millis() as u64;
        if period != self.period {
            self.period = period;
            self.emitted = 0;
        }
        if self.emitted >= WARN_BURST {
            self.suppressed += 1;
            return None;
        }
        self.emitted += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What the check path needs to derive keys.
#[derive(Debug, Clone, Default)]
pub struct CredentialHeaders {
    /// Headers a bearer token may arrive in (lowercase).
    pub token: Vec<String>,
    /// The API-key header, when API keys are configured.
    pub api_key: Option<String>,
}

#[derive(Debug)]
struct Shared {
    sources: Mutex<Tracker>,
    identities: Mutex<Tracker>,
    window_ms: u64,
    started: Instant,
    unix_start_ms: u64,
}

impl Shared {
    fn over(&self, which: &Mutex<Tracker>) -> usize {
        let (w, _) = self.window_at(self.started.elapsed());
        which.lock().map(|t| t.over_count(w)).unwrap_or(0)
    }

    fn window_at(&self, elapsed: Duration) -> (u64, u64) {
        let ms = elapsed.as_millis() as u64;
        (ms / self.window_ms, ms)
    }
}

/// Scrape-time gauges: "over the threshold now" must fall to 0 when a window ends quietly.
#[derive(Debug)]
struct OverGauges(std::sync::Arc<Shared>);

impl Collector for OverGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, which) in [
            (
                "sources_over_threshold",
                "Sources whose failed authentications reached authn.throttle.max_failures in the current window",
                &self.0.sources,
            ),
            (
                "identities_over_threshold",
                "Claimed identities (unverified) whose failed authentications reached the threshold in the current window",
                &self.0.identities,
            ),
        ] {
            let g = ConstGauge::new(self.0.over(which) as i64);
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)?;
        }
        Ok(())
    }
}

/// Failed-authentication tracking and (optionally) pre-authentication throttling.
#[derive(Debug)]
pub struct Anomalies {
    shared: std::sync::Arc<Shared>,
    throttle: bool,
    key: ThrottleKey,
    trusted_hops: usize,
    threshold: u32,
    headers: CredentialHeaders,
    gate: Mutex<WarnGate>,
    crossings: Family<KindLabel, Counter>,
    throttled: Counter,
}

impl Anomalies {
    /// `registry` receives `anomaly_*` (the caller's prefix applies).
    pub fn new(cfg: &ThrottleConfig, headers: CredentialHeaders, registry: &mut Registry) -> Self {
        let unix_start_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let shared = std::sync::Arc::new(Shared {
            sources: Mutex::new(Tracker::new(cfg.track, cfg.max_failures)),
            identities: Mutex::new(Tracker::new(cfg.track, cfg.max_failures)),
            window_ms: (cfg.window.as_millis() as u64).max(1),
            started: Instant::now(),
            unix_start_ms,
        });
        let crossings = Family::<KindLabel, Counter>::default();
        registry.register(
            "crossings",
            "Keys that crossed the failed-authentication threshold (once per key and window)",
            crossings.clone(),
        );
        let throttled = Counter::default();
        registry.register("throttled", "Checks answered 429 by authn.throttle before verification", throttled.clone());
        registry.register_collector(Box::new(OverGauges(shared.clone())));
        Self {
            shared,
            throttle: cfg.enabled,
            key: cfg.key,
            trusted_hops: cfg.trusted_hops as usize,
            threshold: cfg.max_failures,
            headers,
            gate: Mutex::new(WarnGate::default()),
            crossings,
            throttled,
        }
    }

    /// `Some(retry-after seconds)` when throttling is on and the request's source is over the
    /// threshold in the current window. Called before authentication: reads no credential.
    pub fn throttled(&self, view: &RequestView<'_>) -> Option<u32> {
        if !self.throttle {
            return None;
        }
        let key = source_key(view, self.key, self.trusted_hops)?;
        let (w, ms) = self.shared.window_at(self.shared.started.elapsed());
        let over = self.shared.sources.lock().ok()?.is_over(&key, w);
        if !over {
            return None;
        }
        self.throttled.inc();
        let left_ms = (w + 1) * self.shared.window_ms - ms;
        Some(left_ms.div_ceil(1000).clamp(1, u32::MAX as u64) as u32)
    }

    /// Records one failed authentication (`reason`: the deny's bounded label).
    pub fn record_failure(&self, view: &RequestView<'_>, reason: &'static str) {
        let (w, ms) = self.shared.window_at(self.shared.started.elapsed());
        if let Some(key) = source_key(view, self.key, self.trusted_hops) {
            let crossed = self.shared.sources.lock().map(|mut t| t.record(&key, reason, w, ms)).unwrap_or(false);
            if crossed {
                self.crossed(Kind::Source, &key, reason, ms);
            }
        }
        if let Some(key) = claimed_identity(view, &self.headers) {
            let crossed = self.shared.identities.lock().map(|mut t| t.record(&key, reason, w, ms)).unwrap_or(false);
            if crossed {
                self.crossed(Kind::Identity, &key, reason, ms);
            }
        }
    }

    fn crossed(&self, kind: Kind, key: &str, reason: &'static str, now_ms: u64) {
        self.crossings.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
        let admitted = self.gate.lock().ok().and_then(|mut g| g.admit(now_ms));
        if let Some(suppressed) = admitted {
            // Keys are attacker-influenced: `?` escapes control characters.
            tracing::warn!(
                kind = kind.as_str(),
                key = ?key,
                threshold = self.threshold,
                window_seconds = self.shared.window_ms / 1000,
                last_reason = reason,
                throttling = self.throttle,
                suppressed_since_last = suppressed,
                "failed authentications crossed the threshold"
            );
        }
    }

    /// The `n` heaviest sources and identities.
    pub fn report(&self, n: usize) -> Report {
        let n = n.min(MAX_TOP);
        let s = &self.shared;
        let (w, _) = s.window_at(s.started.elapsed());
        let (sources, sover) =
            s.sources.lock().map(|t| (t.top(n, Kind::Source, w, s.unix_start_ms), t.over_count(w))).unwrap_or_default();
        let (identities, iover) = s
            .identities
            .lock()
            .map(|t| (t.top(n, Kind::Identity, w, s.unix_start_ms), t.over_count(w)))
            .unwrap_or_default();
        Report {
            window_seconds: s.window_ms / 1000,
            threshold: self.threshold,
            throttling: self.throttle,
            sources_over_threshold: sover,
            identities_over_threshold: iover,
            sources,
            identities,
        }
    }
}

/// The throttle key of a request: never anything the client can choose beyond its own
/// address. `None` when the request carries no usable source.
pub fn source_key(view: &RequestView<'_>, key: ThrottleKey, trusted_hops: usize) -> Option<String> {
    let ip = match key {
        ThrottleKey::Peer => {
            if let Some(p) = view.source_principal.filter(|p| !p.is_empty()) {
                return Some(format!("peer:{}", clean(p)));
            }
            view.source_ip
        }
        ThrottleKey::SourceIp => view.source_ip,
        ThrottleKey::ForwardedFor => forwarded_client(view, trusted_hops).or(view.source_ip),
    }?;
    Some(ip_key(ip))
}

/// The `trusted_hops`-th address from the right of `x-forwarded-for`: the one written by the
/// farthest trusted proxy. Entries left of it are the client's to forge and are never read.
fn forwarded_client(view: &RequestView<'_>, trusted_hops: usize) -> Option<IpAddr> {
    let xff = view.header_joined("x-forwarded-for")?;
    let entries: Vec<&str> = xff.split(',').map(str::trim).collect();
    let idx = entries.len().checked_sub(trusted_hops.max(1))?;
    entries.get(idx)?.parse().ok()
}

/// IPv6 sources are keyed by their /64: one host usually holds a whole /64.
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("ip:{net}/64")
            }
        },
    }
}

/// The identity a failed request claimed, read WITHOUT verification (a signal, never a
/// decision): `jwt:<iss>|<sub>` from the first token header, or `key:<8 hex>` of the API
/// key's SHA-256. Never the credential itself.
pub fn claimed_identity(view: &RequestView<'_>, headers: &CredentialHeaders) -> Option<String> {
    for h in &headers.token {
        if let Some(v) = view.header(h)
            && let Some((iss, sub)) = unverified_iss_sub(v)
        {
            return Some(format!("jwt:{}|{}", clean(&iss), clean(&sub)));
        }
    }
    let key = view.header(headers.api_key.as_deref()?)?;
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(key.as_bytes());
    Some(format!("key:{}", hex::encode(&d[..4])))
}

/// `iss` and `sub` of a JWT-shaped value (an optional scheme word before it), unverified.
fn unverified_iss_sub(value: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Claims {
        #[serde(default)]
        iss: Option<String>,
        #[serde(default)]
        sub: Option<String>,
    }
    let token = value.trim().rsplit(' ').next()?;
    let mut parts = token.split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    // Failures answered from the negative cache are cheap: keep the tracker's decode cheap too.
    // Oversized claims are one signal of their own rather than a costly parse.
    if payload.len() > MAX_PAYLOAD_CHARS {
        return Some(("?".to_owned(), "(oversized claims)".to_owned()));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let c: Claims = serde_json::from_slice(&bytes).ok()?;
    if c.iss.is_none() && c.sub.is_none() {
        return None;
    }
    Some((c.iss.unwrap_or_default(), c.sub.unwrap_or_default()))
}

/// Bounded, printable key material.
fn clean(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if out.len() > MAX_KEY_BYTES / 2 {
        let mut end = MAX_KEY_BYTES / 2;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests;
