//! `telemetry`: OpenTelemetry traces (one span per check, joined to the caller's trace).
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Telemetry exported to an OpenTelemetry collector.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Check spans over OTLP; off by default.
    #[serde(default)]
    pub traces: TracesConfig,
}

/// `telemetry.traces`. Fields left unset fall back to the standard `OTEL_*` environment
/// variables, then to the defaults below (see docs/observability.md for the precedence).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// Off (the default): no exporter, and no span work at all on the check path.
    #[serde(default)]
    pub enabled: bool,
    /// OTLP gRPC endpoint, plaintext `http://` only, e.g.
    /// `http://otel-collector.observability:4317`. Unset:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`, then
    /// `http://localhost:4317`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Only `grpc` is built in. Unset: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` /
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, which must then say `grpc` too.
    #[serde(default)]
    pub protocol: Option<TraceProtocol>,
    /// Fraction of requests WITHOUT an incoming trace that start a sampled trace (0.0–1.0).
    /// Requests with a trace context always follow their parent's sampled flag. Unset:
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, then 1.0 (`parentbased_always_on`).
    #[serde(default)]
    pub sampler_ratio: Option<f64>,
    /// Ended spans waiting for export at most; more are dropped and counted in
    /// `portcullis_trace_spans_dropped_total`, never waited for.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// The longest one export call to the collector may take (connection and retries included).
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Record the Cedar principal itself (`enduser.id`, e.g. `User::"alice"`: personal data) on
    /// the span. Off: only its type (`User`, `Service`, `ApiClient`, `Anonymous`).
    #[serde(default)]
    pub include_subject: bool,
}

fn default_queue_size() -> usize {
    2048
}
fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The largest `queue_size`: each queued span holds its attributes (~1 KiB), so this bounds
/// the memory a stalled collector can cost.
pub const MAX_TRACE_QUEUE: usize = 65_536;

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: None,
            protocol: None,
            sampler_ratio: None,
            queue_size: default_queue_size(),
            export_timeout: default_export_timeout(),
            include_subject: false,
        }
    }
}

impl TelemetryConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.traces;
        if let Some(r) = t.sampler_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(ConfigError::invalid("telemetry.traces.sampler_ratio", "must be between 0.0 and 1.0"));
        }
        if t.queue_size == 0 || t.queue_size > MAX_TRACE_QUEUE {
            return Err(ConfigError::invalid(
                "telemetry.traces.queue_size",
                format!("must be between 1 and {MAX_TRACE_QUEUE}"),
            ));
        }
        if t.export_timeout < Duration::from_millis(10) || t.export_timeout > Duration::from_secs(60) {
            return Err(ConfigError::invalid("telemetry.traces.export_timeout", "must be between 10ms and 60s"));
        }
        if let Some(e) = &t.endpoint {
            check_endpoint(e).map_err(|m| ConfigError::invalid("telemetry.traces.endpoint", m))?;
        }
        Ok(())
    }
}

/// An OTLP endpoint is an `http://` URL with a host: plaintext gRPC to a collector on the node or
/// in the pod (no TLS client is built in for export).
pub fn check_endpoint(e: &str) -> Result<(), String> {
    match e.strip_prefix("http://") {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !r.chars().any(char::is_whitespace) => Ok(()),
        _ => Err(format!("`{e}` is not an http:// URL with a host (https is not supported for export)")),
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TraceProtocol {
    /// OTLP over gRPC (port 4317), through the same tonic stack as the server.
    #[default]
    Grpc,
}

#[cfg(test)]
mod tests {

    use crate::config::tests::parse;

    #[test]
    fn traces_are_off_by_default_and_bad_values_name_their_field() {
        let c = parse("policy: {dir: x}\n").unwrap();
        assert!(!c.telemetry.traces.enabled);
        assert!(!c.telemetry.traces.include_subject);
        let c = parse(
            "policy: {dir: x}\ntelemetry: {traces: {enabled: true, endpoint: 'http://c:4317', protocol: grpc, \
             sampler_ratio: 0.25, queue_size: 10, export_timeout: 2s}}\n",
        )
        .unwrap();
        assert!(c.telemetry.traces.enabled);
        assert_eq!(c.telemetry.traces.sampler_ratio, Some(0.25));
        for (bad, field) in [
            ("sampler_ratio: 1.5", "telemetry.traces.sampler_ratio"),
            ("sampler_ratio: -0.1", "telemetry.traces.sampler_ratio"),
            ("queue_size: 0", "telemetry.traces.queue_size"),
            ("queue_size: 1000000", "telemetry.traces.queue_size"),
            ("export_timeout: 0s", "telemetry.traces.export_timeout"),
            ("endpoint: 'collector:4317'", "telemetry.traces.endpoint"),
            ("endpoint: 'http://'", "telemetry.traces.endpoint"),
            ("endpoint: 'https://c:4317'", "telemetry.traces.endpoint"),
        ] {
            let err = parse(&format!("policy: {{dir: x}}\ntelemetry: {{traces: {{{bad}}}}}\n")).unwrap_err();
            assert!(err.contains(field), "{bad}: {err}");
        }
        // Only gRPC is built in; an unknown protocol or field is refused, not ignored.
        assert!(parse("policy: {dir: x}\ntelemetry: {traces: {protocol: http/protobuf}}\n").is_err());
        assert!(parse("policy: {dir: x}\ntelemetry: {traces: {sample: 1}}\n").is_err());
    }
}
