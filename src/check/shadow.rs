//! Shadow evaluation: a check that reached Cedar on the live set is evaluated again against the
//! candidate set (a sampled fraction of them), and the two outcomes are compared by decision and
//! determining policy ids. The candidate never changes the live decision: its errors and panics
//! are counted as its deny. Disagreements are counted (bounded labels) and logged, rate-limited.
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;

use crate::authn::Identities;
use crate::authz::{self, AuthzOutcome, CedarMapping};
use crate::config::CandidateConfig;
use crate::decision::ShadowOutcome;
use crate::policy::PolicyStore;
use crate::request::RequestView;

/// Distinct policy ids with their own label value; further ones share `_other`.
const MAX_POLICY_LABELS: usize = 64;
/// The label value for policy ids past [`MAX_POLICY_LABELS`].
const OTHER_POLICY: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    live: &'static str,
    shadow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    side: &'static str,
    policy: String,
}

/// The candidate store and everything shadowing needs.
pub(crate) struct Shadow {
    store: Arc<PolicyStore>,
    sampler: Sampler,
    log: LogBudget,
    checks: Counter,
    errors: Counter,
    disagreements: Family<PairLabels, Counter>,
    by_policy: Family<PolicyLabels, Counter>,
    /// Policy ids that have a label value of their own (at most [`MAX_POLICY_LABELS`]).
    labelled: Mutex<HashSet<String>>,
}

impl Shadow {
    /// `registry` is the `shadow` sub-registry (`portcullis_shadow_*`).
    pub(crate) fn new(cfg: &CandidateConfig, store: Arc<PolicyStore>, registry: &mut Registry) -> Self {
        let checks = Counter::default();
        registry.register("checks", "Checks also evaluated against the candidate policy set", checks.clone());
        let errors = Counter::default();
        registry.register("errors", "Shadow evaluations that failed (counted as the candidate's deny)", errors.clone());
        let disagreements = Family::<PairLabels, Counter>::default();
        registry.register(
            "disagreements",
            "Shadowed checks where the candidate's decision or determining policies differ from the live set's",
            disagreements.clone(),
        );
        let by_policy = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "disagreement_policies",
            "Determining policies found on only one side of a disagreement (at most 64 ids, then `_other`)",
            by_policy.clone(),
        );
        Self {
            store,
            sampler: Sampler::new(cfg.sample),
            log: LogBudget::new(cfg.log_per_second),
            checks,
            errors,
            disagreements,
            by_policy,
            labelled: Mutex::new(HashSet::new()),
        }
    }

    /// Evaluates the candidate for a check whose live Cedar outcome is `live` (against the live
    /// snapshot `live_version`). `None` when this check is not sampled or no candidate is loaded.
    pub(crate) fn evaluate(
        &self,
        view: &RequestView<'_>,
        ids: &Identities,
        mapping: &CedarMapping,
        live: &AuthzOutcome,
        live_version: &str,
        request_id: &str,
    ) -> Option<ShadowOutcome> {
        if !self.sampler.take() {
            return None;
        }
        let snapshot = self.store.load()?;
        let outcome = if snapshot.policy_count == 0 {
            // An empty candidate set is deny-all, as an empty live set is.
            Some(ShadowOutcome {
                allowed: false,
                policies: Vec::new(),
                version: snapshot.version.to_string(),
                errored: false,
            })
        } else {
            // A panic in the candidate must not reach the live decision.
            let eval = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                authz::authorize(&snapshot.engine, view, ids, mapping)
            }));
            match eval {
                Ok(Ok(o)) => Some(ShadowOutcome {
                    allowed: o.allowed,
                    errored: !o.errors.is_empty(),
                    policies: o.policies.to_vec(),
                    version: snapshot.version.to_string(),
                }),
                Ok(Err(_)) | Err(_) => None,
            }
        };
        let outcome = outcome.unwrap_or_else(|| ShadowOutcome {
            allowed: false,
            policies: Vec::new(),
            version: snapshot.version.to_string(),
            errored: true,
        });
        self.record(live, live_version, &outcome, request_id);
        Some(outcome)
    }

    fn record(&self, live: &AuthzOutcome, live_version: &str, shadow: &ShadowOutcome, request_id: &str) {
        self.checks.inc();
        if shadow.errored {
            self.errors.inc();
        }
        // Both lists come sorted from `authz`.
        if live.allowed == shadow.allowed && *live.policies == *shadow.policies {
            return;
        }
        let live_verdict = if live.allowed { "allow" } else { "deny" };
        self.disagreements.get_or_create(&PairLabels { live: live_verdict, shadow: shadow.verdict() }).inc();
        for p in live.policies.iter().filter(|p| !shadow.policies.contains(p)) {
            self.by_policy.get_or_create(&PolicyLabels { side: "live", policy: self.label(p) }).inc();
        }
        for p in shadow.policies.iter().filter(|p| !live.policies.contains(p)) {
            self.by_policy.get_or_create(&PolicyLabels { side: "shadow", policy: self.label(p) }).inc();
        }
        if let Some(suppressed) = self.log.take(Instant::now()) {
            tracing::info!(
                target: "portcullis::shadow",
                request_id,
                live_decision = live_verdict,
                live_policies = ?live.policies,
                live_version,
                shadow_decision = shadow.verdict(),
                shadow_policies = ?shadow.policies,
                shadow_version = %shadow.version,
                shadow_error = shadow.errored,
                suppressed,
                "shadow policy set disagrees with the live set",
            );
        }
    }

    /// The policy label value: its id while fewer than [`MAX_POLICY_LABELS`] ids have one.
    fn label(&self, id: &str) -> String {
        let Ok(mut seen) = self.labelled.lock() else { return OTHER_POLICY.to_owned() };
        if seen.contains(id) || (seen.len() < MAX_POLICY_LABELS && seen.insert(id.to_owned())) {
            id.to_owned()
        } else {
            OTHER_POLICY.to_owned()
        }
    }
}

/// Takes exactly `sample` of the checks, spread evenly and deterministically (no randomness to
/// seed, and a test can count on it): check `n` is taken when `floor(n·s)` steps.
struct Sampler {
    per_million: u64,
    seen: AtomicU64,
}

impl Sampler {
    fn new(sample: f64) -> Self {
        let per_million = (sample.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        Self { per_million, seen: AtomicU64::new(0) }
    }

    fn take(&self) -> bool {
        match self.per_million {
            0 => false,
            1_000_000 => true,
            p => {
                let n = self.seen.fetch_add(1, Ordering::Relaxed) % 1_000_000;
                (n + 1) * p / 1_000_000 > n * p / 1_000_000
            }
        }
    }
}

/// At most `per_second` log lines per one-second window; the lines that did not fit are
/// counted and reported by the next line that does.
struct LogBudget {
    per_second: u32,
    state: Mutex<Window>,
}

struct Window {
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    fn new(per_second: u32) -> Self {
        Self { per_second, state: Mutex::new(Window { start: None, used: 0, suppressed: 0 }) }
    }

    /// `Some(lines suppressed since the last one)` when a line may be written at `now`.
    fn take(&self, now: Instant) -> Option<u64> {
        if self.per_second == 0 {
            return None;
        }
        let mut w = self.state.lock().ok()?;
        if w.start.is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1)) {
            w.start = Some(now);
            w.used = 0;
        }
        if w.used < self.per_second {
            w.used += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(sample: f64, n: usize) -> usize {
        let s = Sampler::new(sample);
        (0..n).filter(|_| s.take()).count()
    }

    #[test]
    fn the_sampler_takes_exactly_the_configured_fraction() {
        assert_eq!(taken(0.0, 1000), 0);
        assert_eq!(taken(1.0, 1000), 1000);
        assert_eq!(taken(0.5, 1000), 500);
        assert_eq!(taken(0.25, 1000), 250);
        assert_eq!(taken(0.001, 1000), 1);
        assert_eq!(taken(0.9, 10), 9);
    }

    #[test]
    fn policy_labels_are_capped_at_64_distinct_ids() {
        let cfg = crate::config::Config::from_yaml("policy: {dir: x, candidate: {dir: y}}\n").expect("parses");
        let mut registry = Registry::default();
        let store = Arc::new(PolicyStore::candidate(&mut registry));
        let shadow = Shadow::new(cfg.policy.candidate.as_ref().expect("candidate"), store, &mut registry);
        let labels: Vec<String> = (0..70).map(|i| shadow.label(&format!("p{i}"))).collect();
        assert_eq!(labels[63], "p63");
        assert!(labels[64..].iter().all(|l| l == OTHER_POLICY), "{labels:?}");
        // Ids that already have a label keep it.
        assert_eq!(shadow.label("p0"), "p0");
        assert_eq!(shadow.label("p64"), OTHER_POLICY);
    }

    #[test]
    fn the_log_budget_suppresses_past_the_rate_and_reports_the_count_next() {
        let b = LogBudget::new(2);
        let t0 = Instant::now();
        assert_eq!(b.take(t0), Some(0));
        assert_eq!(b.take(t0), Some(0));
        assert_eq!(b.take(t0 + Duration::from_millis(500)), None);
        assert_eq!(b.take(t0 + Duration::from_millis(999)), None);
        // A new window: the next line carries the two it replaced.
        assert_eq!(b.take(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(b.take(t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(LogBudget::new(0).take(t0), None, "0 logs nothing");
    }
}
