//! Per-caller rate limiting (GCRA, via governor), applied after authentication and before Cedar:
//! a caller over its quota gets a 429 with `Retry-After`. Callers are keyed by their proven
//! identity, anonymous callers by source IP. The key table is bounded: once `max_tracked` callers
//! are being tracked, new ones share one overflow bucket until idle entries are pruned. An API
//! key may carry its own quota (its Secret entry's `rate_limit`): that client is then limited by
//! it instead of the global one, even when no global limit is configured.
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::authn::apikey::KeyRateLimit;
use crate::authn::{Identities, PrincipalRef};
use crate::config::{Config, RateLimitConfig};
use crate::request::RequestView;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// The bucket key used while the table is full.
const OVERFLOW: &str = "\u{0}overflow";
/// How often idle entries may be pruned (pruning walks the whole table).
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// Most distinct per-key quotas with a limiter at once; past it (after pruning idle ones) a key's
/// own quota falls back to the global one.
const MAX_KEY_QUOTAS: usize = 1024;

type Keyed = DefaultKeyedRateLimiter<String>;

/// Keyed limiter with a bounded table.
pub(crate) struct RateLimiter {
    /// The global quota; `None` when only API keys' own quotas limit.
    limiter: Option<Arc<Keyed>>,
    /// One keyed limiter per distinct per-key quota.
    key_quotas: Mutex<HashMap<KeyRateLimit, Arc<Keyed>>>,
    clock: DefaultClock,
    max_tracked: usize,
    started: Instant,
    last_prune_ms: AtomicU64,
}

impl RateLimiter {
    /// `None` when the config asks for no limit.
    pub(crate) fn new(cfg: &RateLimitConfig) -> Option<Self> {
        let rate = NonZeroU32::new(cfg.requests_per_second)?;
        let burst = cfg.burst.and_then(NonZeroU32::new).unwrap_or(rate);
        Some(Self::build(Some(Quota::per_second(rate).allow_burst(burst)), cfg.max_tracked))
    }

    /// The limiter for a config: the global `rate_limit` if any; and, when API keys come from
    /// Secrets (whose entries may carry their own `rate_limit`), one even without it.
    pub(crate) fn for_config(cfg: &Config) -> Option<Self> {
        if let Some(rl) = cfg.rate_limit.as_ref().and_then(Self::new) {
            return Some(rl);
        }
        let keys = &cfg.authn.api_keys;
        let max_tracked = cfg.rate_limit.as_ref().map_or(100_000, |r| r.max_tracked);
        (keys.dir.is_some() || keys.kubernetes.is_some()).then(|| Self::build(None, max_tracked))
    }

    fn build(global: Option<Quota>, max_tracked: usize) -> Self {
        Self {
            limiter: global.map(|q| Arc::new(DefaultKeyedRateLimiter::keyed(q))),
            key_quotas: Mutex::default(),
            clock: DefaultClock::default(),
            max_tracked: max_tracked.max(1),
            started: Instant::now(),
            last_prune_ms: AtomicU64::new(0),
        }
    }

    /// The limiter for this caller: its API key's own quota if it has one, else the global one.
    fn limiter_for(&self, ids: &Identities) -> Option<Arc<Keyed>> {
        let PrincipalRef::ApiClient(c) = ids.principal() else { return self.limiter.clone() };
        let Some(q) = c.rate_limit else { return self.limiter.clone() };
        let mut quotas = self.key_quotas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = quotas.get(&q) {
            return Some(l.clone());
        }
        if quotas.len() >= MAX_KEY_QUOTAS {
            // Forget quotas nobody is using (e.g. of rotated keys).
            quotas.retain(|_, l| {
                l.retain_recent();
                !l.is_empty()
            });
        }
        if quotas.len() >= MAX_KEY_QUOTAS {
            tracing::warn!(client = %c.client, "too many distinct per-key rate limits; the global one applies");
            return self.limiter.clone();
        }
        let l = Arc::new(DefaultKeyedRateLimiter::keyed(Quota::per_second(q.requests_per_second).allow_burst(q.burst)));
        quotas.insert(q, l.clone());
        Some(l)
    }

    /// `Ok` if the caller may proceed; otherwise the seconds to wait (at least 1).
    pub(crate) fn check(&self, req: &RequestView<'_>, ids: &Identities) -> Result<(), u32> {
        let Some(limiter) = self.limiter_for(ids) else { return Ok(()) };
        let mut key = caller_key(req, ids);
        if limiter.len() >= self.max_tracked {
            self.prune(&limiter);
            if limiter.len() >= self.max_tracked {
                key = OVERFLOW.to_owned();
            }
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            wait.as_secs_f64().ceil().max(1.0) as u32
        })
    }

    fn prune(&self, limiter: &Keyed) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= PRUNE_EVERY.as_millis() as u64
            && self.last_prune_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Callers currently tracked by the global quota (tests check the table stays bounded).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// The principal (by the one precedence rule in authn), else the source address.
fn caller_key(req: &RequestView<'_>, ids: &Identities) -> String {
    match ids.principal() {
        PrincipalRef::User(j) => format!("jwt:{}|{}", j.issuer, j.subject),
        PrincipalRef::ApiClient(c) => format!("key:{}", c.client),
        PrincipalRef::Service(p) => format!("peer:{}", p.spiffe_id),
        PrincipalRef::Anonymous => match req.source_ip {
            Some(ip) => format!("ip:{ip}"),
            None => "anonymous".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Limits;
    use crate::proto::auth::{AttributeContext, CheckRequest, attribute_context};
    use crate::proto::core::{Address, SocketAddress, address, socket_address};

    /// `GET /x` from `ip` (built by hand: ratelimit does not depend on the CLI).
    fn spec(ip: &str) -> CheckRequest {
        let source = attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.to_owned(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let http = attribute_context::HttpRequest { method: "GET".into(), path: "/x".into(), ..Default::default() };
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(source),
                request: Some(attribute_context::Request { time: None, http: Some(http) }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_caller_over_quota_is_told_when_to_retry_and_others_are_not_affected() {
        let rl =
            RateLimiter::new(&RateLimitConfig { requests_per_second: 1, burst: Some(2), max_tracked: 10 }).unwrap();
        let a = spec("10.0.0.1");
        let b = spec("10.0.0.2");
        let (a, b) = (crate::proto::check_in(&a), crate::proto::check_in(&b));
        let (va, vb) = (
            RequestView::from_check(&a, &Limits::default()).unwrap(),
            RequestView::from_check(&b, &Limits::default()).unwrap(),
        );
        let ids = Identities::default();
        assert!(rl.check(&va, &ids).is_ok());
        assert!(rl.check(&va, &ids).is_ok());
        let wait = rl.check(&va, &ids).unwrap_err();
        assert!(wait >= 1);
        assert!(rl.check(&vb, &ids).is_ok());
    }

    #[test]
    fn the_table_stays_bounded_under_many_callers() {
        let rl =
            RateLimiter::new(&RateLimitConfig { requests_per_second: 1000, burst: None, max_tracked: 50 }).unwrap();
        let ids = Identities::default();
        for i in 0..2000u32 {
            let r = spec(&format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255));
            let r_in = crate::proto::check_in(&r);
            let v = RequestView::from_check(&r_in, &Limits::default()).unwrap();
            let _ = rl.check(&v, &ids);
        }
        assert!(rl.tracked() <= 51, "tracked {}", rl.tracked());
    }

    #[test]
    fn callers_are_keyed_by_their_principal_before_their_address() {
        let rl =
            RateLimiter::new(&RateLimitConfig { requests_per_second: 1, burst: Some(1), max_tracked: 10 }).unwrap();
        let (a, b) = (spec("10.0.0.1"), spec("10.0.0.2"));
        let a_in = crate::proto::check_in(&a);
        let va = RequestView::from_check(&a_in, &Limits::default()).unwrap();
        let b_in = crate::proto::check_in(&b);
        let vb = RequestView::from_check(&b_in, &Limits::default()).unwrap();
        let user = Identities {
            jwt: Some(Arc::new(crate::authn::JwtIdentity::for_tests("https://i", "alice", &[], &[]))),
            ..Identities::default()
        };
        let peer = crate::authn::PeerIdentity {
            spiffe_id: "spiffe://cluster.local/ns/a/sa/b".into(),
            trust_domain: "cluster.local".into(),
            namespace: "a".into(),
            service_account: "b".into(),
        };
        let user_via_peer = Identities { peer: Some(peer.clone()), ..user.clone() };
        assert_eq!(caller_key(&va, &user), "jwt:https://i|alice");
        assert_eq!(caller_key(&va, &user_via_peer), "jwt:https://i|alice");
        assert_eq!(
            caller_key(&va, &Identities { peer: Some(peer), ..Identities::default() }),
            "peer:spiffe://cluster.local/ns/a/sa/b"
        );
        assert_eq!(caller_key(&va, &Identities::default()), "ip:10.0.0.1");
        // One user from two addresses, with or without a peer, shares one bucket.
        assert!(rl.check(&va, &user).is_ok());
        assert!(rl.check(&vb, &user_via_peer).is_err());
        // The address alone is its own caller.
        assert!(rl.check(&vb, &Identities::default()).is_ok());
    }

    fn api_client(name: &str, rate_limit: Option<(u32, u32)>) -> Identities {
        let nz = |n: u32| NonZeroU32::new(n).expect("non-zero");
        Identities {
            api_client: Some(Arc::new(crate::authn::ApiClientIdentity {
                client: name.into(),
                groups: Vec::new(),
                rate_limit: rate_limit.map(|(r, b)| KeyRateLimit { requests_per_second: nz(r), burst: nz(b) }),
            })),
            ..Identities::default()
        }
    }

    #[test]
    fn an_api_key_with_its_own_quota_is_limited_by_it_instead_of_the_global_one() {
        let rl =
            RateLimiter::new(&RateLimitConfig { requests_per_second: 1, burst: Some(1), max_tracked: 10 }).unwrap();
        let r = spec("10.0.0.1");
        let r_in = crate::proto::check_in(&r);
        let v = RequestView::from_check(&r_in, &Limits::default()).unwrap();
        // A generous key: more than the global burst passes.
        let big = api_client("big", Some((1, 3)));
        for _ in 0..3 {
            assert!(rl.check(&v, &big).is_ok());
        }
        assert!(rl.check(&v, &big).is_err(), "its own burst is the limit");
        // A key without one: the global quota.
        let plain = api_client("plain", None);
        assert!(rl.check(&v, &plain).is_ok());
        assert!(rl.check(&v, &plain).is_err());
    }

    #[test]
    fn per_key_quotas_apply_without_a_global_limit_and_nothing_else_is_limited() {
        let yaml = "policy: {dir: p}\nauthn: {api_keys: {dir: k}}\n";
        let cfg = crate::config::Config::from_yaml(yaml).expect("config");
        let rl = RateLimiter::for_config(&cfg).expect("a limiter for per-key quotas");
        let r = spec("10.0.0.1");
        let r_in = crate::proto::check_in(&r);
        let v = RequestView::from_check(&r_in, &Limits::default()).unwrap();
        let strict = api_client("strict", Some((1, 1)));
        assert!(rl.check(&v, &strict).is_ok());
        assert!(rl.check(&v, &strict).is_err());
        for _ in 0..10 {
            assert!(rl.check(&v, &api_client("plain", None)).is_ok());
            assert!(rl.check(&v, &Identities::default()).is_ok());
        }
        let none = crate::config::Config::from_yaml("policy: {dir: p}\n").expect("config");
        assert!(RateLimiter::for_config(&none).is_none(), "no Secret source, no global limit: no limiter");
    }

    #[test]
    fn zero_rate_means_no_limiter() {
        assert!(RateLimiter::new(&RateLimitConfig { requests_per_second: 0, burst: None, max_tracked: 1 }).is_none());
    }
}
