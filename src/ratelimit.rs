//! Per-caller rate limiting (GCRA, via governor), applied after authentication and before Cedar:
//! a caller over its quota gets a 429 with `Retry-After`. Callers are keyed by their proven
//! identity, anonymous callers by source IP. The key table is bounded: once `max_tracked` callers
//! are being tracked, new ones share one overflow bucket until idle entries are pruned.
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::authn::Identities;
use crate::config::RateLimitConfig;
use crate::request::RequestView;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// The bucket key used while the table is full.
const OVERFLOW: &str = "\u{0}overflow";
/// How often idle entries may be pruned (pruning walks the whole table).
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Keyed limiter with a bounded table.
pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    max_tracked: usize,
    started: Instant,
    last_prune_ms: AtomicU64,
}

impl RateLimiter {
    /// `None` when the config asks for no limit.
    pub fn new(cfg: &RateLimitConfig) -> Option<Self> {
        let rate = NonZeroU32::new(cfg.requests_per_second)?;
        let burst = cfg.burst.and_then(NonZeroU32::new).unwrap_or(rate);
        Some(Self {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            max_tracked: cfg.max_tracked.max(1),
            started: Instant::now(),
            last_prune_ms: AtomicU64::new(0),
        })
    }

    /// `Ok` if the caller may proceed; otherwise the seconds to wait (at least 1).
    pub fn check(&self, req: &RequestView<'_>, ids: &Identities) -> Result<(), u32> {
        let mut key = caller_key(req, ids);
        if self.limiter.len() >= self.max_tracked {
            self.prune();
            if self.limiter.len() >= self.max_tracked {
                key = OVERFLOW.to_owned();
            }
        }
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            wait.as_secs_f64().ceil().max(1.0) as u32
        })
    }

    fn prune(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= PRUNE_EVERY.as_millis() as u64
            && self.last_prune_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    /// Callers currently tracked.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// The strongest proven identity, else the source address.
fn caller_key(req: &RequestView<'_>, ids: &Identities) -> String {
    if let Some(j) = &ids.jwt {
        format!("jwt:{}|{}", j.issuer, j.subject)
    } else if let Some(c) = &ids.api_client {
        format!("key:{}", c.client)
    } else if let Some(p) = &ids.peer {
        format!("peer:{}", p.spiffe_id)
    } else {
        match req.source_ip {
            Some(ip) => format!("ip:{ip}"),
            None => "anonymous".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RequestSpec;
    use crate::config::Limits;

    fn spec(ip: &str) -> crate::proto::auth::CheckRequest {
        let y = format!("path: /x\nsource: {{address: {ip}}}\n");
        serde_saphyr::from_str::<RequestSpec>(&y).unwrap().to_check_request()
    }

    #[test]
    fn a_caller_over_quota_is_told_when_to_retry_and_others_are_not_affected() {
        let rl =
            RateLimiter::new(&RateLimitConfig { requests_per_second: 1, burst: Some(2), max_tracked: 10 }).unwrap();
        let a = spec("10.0.0.1");
        let b = spec("10.0.0.2");
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
            let v = RequestView::from_check(&r, &Limits::default()).unwrap();
            let _ = rl.check(&v, &ids);
        }
        assert!(rl.tracked() <= 51, "tracked {}", rl.tracked());
    }

    #[test]
    fn zero_rate_means_no_limiter() {
        assert!(RateLimiter::new(&RateLimitConfig { requests_per_second: 0, burst: None, max_tracked: 1 }).is_none());
    }
}
