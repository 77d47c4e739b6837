//! Check-level metrics (the other modules register their own families in sub-registries) and
//! the OpenMetrics text encoder used by the admin endpoint.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    decision: &'static str,
    reason: &'static str,
}

/// Checks by decision and reason, and check latency.
#[derive(Clone)]
pub struct CheckMetrics {
    checks: Family<CheckLabels, Counter>,
    latency: Histogram,
    shed: Counter,
}

impl CheckMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register("checks", "Checks by decision and reason", checks.clone());
        // 10 µs … ~80 ms
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 14));
        registry.register("check_duration_seconds", "Time to decide one check", latency.clone());
        let shed = Counter::default();
        registry.register(
            "checks_shed",
            "Checks answered 503 overloaded: limits.max_in_flight were being decided",
            shed.clone(),
        );
        Self { checks, latency, shed }
    }

    pub fn record(&self, allowed: bool, reason: &'static str, seconds: f64) {
        let decision = if allowed { "allow" } else { "deny" };
        self.checks.get_or_create(&CheckLabels { decision, reason }).inc();
        self.latency.observe(seconds);
    }

    /// One check shed by the in-flight cap (it is also recorded as a deny `overloaded`).
    pub fn shed(&self) {
        self.shed.inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    /// `check` or `other` (health, reflection): bounded whatever the client sends.
    method: &'static str,
}

/// Open gRPC streams under `limits.grpc.max_open_streams`, and the streams refused over it.
#[derive(Clone)]
pub struct StreamMetrics {
    open: Gauge,
    refused: Family<MethodLabel, Counter>,
}

impl StreamMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let open = Gauge::default();
        registry.register("grpc_streams_open", "gRPC streams open now (limits.grpc.max_open_streams)", open.clone());
        let refused = Family::<MethodLabel, Counter>::default();
        registry.register(
            "grpc_streams_refused",
            "gRPC streams answered at once, unread: limits.grpc.max_open_streams were open",
            refused.clone(),
        );
        Self { open, refused }
    }

    /// Counters that no registry sees (unit tests).
    pub fn unregistered() -> Self {
        Self { open: Gauge::default(), refused: Family::default() }
    }

    pub fn opened(&self) {
        self.open.inc();
    }

    pub fn closed(&self) {
        self.open.dec();
    }

    /// One stream refused by the cap; `check`: it was a Check (answered 503 `overloaded`).
    pub fn refused(&self, check: bool) {
        let method = if check { "check" } else { "other" };
        self.refused.get_or_create(&MethodLabel { method }).inc();
    }

    pub fn open_now(&self) -> i64 {
        self.open.get()
    }

    pub fn refused_total(&self, check: bool) -> u64 {
        let method = if check { "check" } else { "other" };
        self.refused.get_or_create(&MethodLabel { method }).get()
    }
}

/// Encodes the registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
