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
struct RefusalLabels {
    /// `check` or `other` (health, reflection): bounded whatever the client sends.
    method: &'static str,
    /// `in_band` (a Check answered 503 `overloaded` in a successful RPC) or `status` (gRPC
    /// `RESOURCE_EXHAUSTED`, trailers only).
    answer: &'static str,
}

/// Open gRPC streams under `limits.grpc.max_open_streams`, and the streams refused over it.
#[derive(Clone)]
pub struct StreamMetrics {
    open: Gauge,
    refused: Family<RefusalLabels, Counter>,
}

impl StreamMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let open = Gauge::default();
        registry.register("grpc_streams_open", "gRPC streams open now (limits.grpc.max_open_streams)", open.clone());
        let refused = Family::<RefusalLabels, Counter>::default();
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

    /// One stream refused by the cap: a Check or not, answered in band or with a gRPC status.
    pub fn refused(&self, check: bool, in_band: bool) {
        self.refused.get_or_create(&refusal(if check { "check" } else { "other" }, in_band)).inc();
    }

    pub fn open_now(&self) -> i64 {
        self.open.get()
    }

    pub fn refused_total(&self, method: &'static str, in_band: bool) -> u64 {
        self.refused.get_or_create(&refusal(method, in_band)).get()
    }
}

fn refusal(method: &'static str, in_band: bool) -> RefusalLabels {
    RefusalLabels { method, answer: if in_band { "in_band" } else { "status" } }
}

/// Encodes the registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
