//! OpenTelemetry traces: one span per check, a child of the caller's own trace (W3C
//! `traceparent`/`tracestate`, or B3 single/multi header), exported over OTLP gRPC.
//!
//! Spans are built with the OpenTelemetry API directly rather than through a
//! `tracing-opentelemetry` layer: a layer would put every `tracing` span and event of the process
//! through OpenTelemetry, while only the check (and key fetches) are worth a span. Off (the
//! default), nothing here is constructed and the check path pays one `Option` branch.
//!
//! Export never slows a check: ended spans go to the SDK's batch processor (its own thread) through
//! a bounded queue. A span that does not fit, or whose export fails (collector slow or down), is
//! dropped and counted in `portcullis_trace_spans_dropped_total`. The SDK does not expose its own
//! drop count, so [`Bounded`] keeps the queue bound itself and [`Counting`] reports what left it.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::config::{TraceProtocol, TracesConfig, check_endpoint};
use crate::decision::Decision;
use crate::policy::PolicyStore;
use crate::proto::auth::CheckRequestIn;

mod context;
pub(crate) use context::request_trace_id;
use context::{Parent, parent, raw_header};

/// The check span's name: the gRPC method it times (semantic conventions for RPC spans).
const SPAN_NAME: &str = "envoy.service.auth.v3.Authorization/Check";
/// Longest header value read as trace context; longer ones are ignored (hostile input).
const MAX_CONTEXT_HEADER: usize = 256;
/// W3C Trace Context: a `tracestate` longer than 512 characters may be discarded.
const MAX_TRACESTATE: usize = 512;
/// At most this many determining policy ids are recorded on one span.
const MAX_POLICY_IDS: usize = 32;
/// Batch export interval unless `OTEL_BSP_SCHEDULE_DELAY` says otherwise.
const SCHEDULE_DELAY: Duration = Duration::from_secs(1);

/// Spans dropped (queue full, or export failed). Global like the SDK machinery it counts.
static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Registers `trace_spans_dropped` (`portcullis_trace_spans_dropped_total`).
pub(crate) fn register(registry: &mut Registry) {
    registry.register(
        "trace_spans_dropped",
        "Check spans dropped: export queue full (telemetry.traces.queue_size) or export to the collector failed",
        DROPPED.clone(),
    );
}

/// Builds and exports check spans. Exists only when `telemetry.traces.enabled`.
pub(crate) struct CheckTracer {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    store: Arc<PolicyStore>,
    include_subject: bool,
}

/// A started check span; ended by [`CheckTracer::finish`].
pub(crate) struct CheckSpan(opentelemetry_sdk::trace::Span);

/// Where the exporter sends and how roots are sampled, after YAML and environment are merged.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    pub endpoint: String,
    pub sampler: SamplerChoice,
}

/// The sampler, as data (so precedence can be tested).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SamplerChoice {
    /// Follow the parent; roots sampled with this probability.
    ParentBased(f64),
    /// Ignore the parent's flag (only from `OTEL_TRACES_SAMPLER=always_*|traceidratio`).
    Ratio(f64),
}

/// Merges `telemetry.traces` with the standard environment variables: a field set in YAML wins,
/// then the signal-specific variable, then the generic one, then the default.
pub(crate) fn resolve(cfg: &TracesConfig, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Resolved> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if cfg.protocol.is_none() {
        let var = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
            .into_iter()
            .find_map(|k| env(k).map(|v| (k, v)));
        if let Some((k, v)) = var
            && v.trim() != "grpc"
        {
            anyhow::bail!("{k}={v}: only `grpc` is supported (telemetry.traces.protocol)");
        }
    }
    let endpoint = match &cfg.endpoint {
        Some(e) => e.clone(),
        None => {
            let var = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
                .into_iter()
                .find_map(|k| env(k).map(|v| (k, v)));
            match var {
                Some((k, v)) => {
                    check_endpoint(&v).map_err(|m| anyhow::anyhow!("{k}: {m}"))?;
                    v
                }
                None => "http://localhost:4317".to_owned(),
            }
        }
    };
    let sampler = match cfg.sampler_ratio {
        Some(r) => SamplerChoice::ParentBased(r),
        None => match env("OTEL_TRACES_SAMPLER") {
            None => SamplerChoice::ParentBased(1.0),
            Some(s) => {
                let arg = || -> anyhow::Result<f64> {
                    match env("OTEL_TRACES_SAMPLER_ARG") {
                        None => Ok(1.0),
                        Some(a) => {
                            a.trim().parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).ok_or_else(|| {
                                anyhow::anyhow!("OTEL_TRACES_SAMPLER_ARG={a}: must be between 0.0 and 1.0")
                            })
                        }
                    }
                };
                match s.trim() {
                    "always_on" => SamplerChoice::Ratio(1.0),
                    "always_off" => SamplerChoice::Ratio(0.0),
                    "traceidratio" => SamplerChoice::Ratio(arg()?),
                    "parentbased_always_on" => SamplerChoice::ParentBased(1.0),
                    "parentbased_always_off" => SamplerChoice::ParentBased(0.0),
                    "parentbased_traceidratio" => SamplerChoice::ParentBased(arg()?),
                    other => anyhow::bail!(
                        "OTEL_TRACES_SAMPLER={other}: supported are always_on, always_off, traceidratio, \
                         parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
                    ),
                }
            }
        },
    };
    Ok(Resolved { endpoint, sampler })
}

/// Starts the exporter when traces are enabled; `None` (and no work at all) otherwise. Must run
/// inside the Tokio runtime: the gRPC channel's connection task lives there.
pub(crate) fn start(cfg: &TracesConfig, store: Arc<PolicyStore>) -> anyhow::Result<Option<Arc<CheckTracer>>> {
    if !cfg.enabled {
        return Ok(None);
    }
    let TraceProtocol::Grpc = cfg.protocol.unwrap_or_default();
    let resolved = resolve(cfg, |k| std::env::var(k).ok())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(resolved.endpoint.clone())
        .with_timeout(cfg.export_timeout)
        .build()
        .map_err(|e| anyhow::anyhow!("telemetry.traces: building the OTLP exporter: {e}"))?;
    let pending = Arc::new(AtomicUsize::new(0));
    let mut batch = BatchConfigBuilder::default().with_max_queue_size(cfg.queue_size);
    if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
        batch = batch.with_scheduled_delay(SCHEDULE_DELAY);
    }
    let processor = Bounded {
        inner: BatchSpanProcessor::builder(Counting { inner: exporter, pending: pending.clone() })
            .with_batch_config(batch.build())
            .build(),
        pending,
        capacity: cfg.queue_size,
    };
    let sampler = match resolved.sampler {
        SamplerChoice::ParentBased(r) => Sampler::ParentBased(Box::new(ratio(r))),
        SamplerChoice::Ratio(r) => ratio(r),
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource())
        .build();
    // Key fetches (authn) use the global tracer: they have no request to hang off.
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing::info!(endpoint = %resolved.endpoint, sampler = ?resolved.sampler, "exporting check spans over OTLP gRPC");
    Ok(Some(Arc::new(CheckTracer {
        tracer: provider.tracer("portcullis"),
        provider,
        store,
        include_subject: cfg.include_subject,
    })))
}

fn ratio(r: f64) -> Sampler {
    if r >= 1.0 {
        Sampler::AlwaysOn
    } else if r <= 0.0 {
        Sampler::AlwaysOff
    } else {
        Sampler::TraceIdRatioBased(r)
    }
}

/// `service.name` is `portcullis` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` name it.
fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let b = Resource::builder();
    if named { b.build() } else { b.with_service_name("portcullis").build() }
}

impl CheckTracer {
    /// Starts the check's span, child of the request's trace context; `None` when the trace is
    /// not sampled (then no span data exists at all).
    pub(crate) fn start_check(&self, req: &CheckRequestIn) -> Option<CheckSpan> {
        let cx = match parent(|name| raw_header(req, name)) {
            Parent::Remote(sc) => Context::new().with_remote_span_context(sc),
            Parent::Unsampled => return None,
            Parent::None => Context::new(),
        };
        let span =
            self.tracer.span_builder(SPAN_NAME).with_kind(SpanKind::Server).start_with_context(&self.tracer, &cx);
        opentelemetry::trace::Span::is_recording(&span).then_some(CheckSpan(span))
    }

    /// Records the decision on the span and ends it (hands it to the export queue).
    pub(crate) fn finish(&self, span: CheckSpan, d: &Decision) {
        use opentelemetry::trace::Span as _;
        let mut span = span.0;
        let status = d.http_status();
        let mut attrs = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "envoy.service.auth.v3.Authorization"),
            KeyValue::new("rpc.method", "Check"),
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("portcullis.decision", d.verdict()),
            KeyValue::new("portcullis.reason", d.reason()),
            KeyValue::new("portcullis.rate_limited", d.reason() == "rate_limited"),
        ];
        if let Some(t) = principal_type(d.principal()) {
            attrs.push(KeyValue::new("portcullis.principal.type", t.to_owned()));
            if self.include_subject {
                attrs.push(KeyValue::new("enduser.id", d.principal().to_owned()));
            }
        }
        if !d.policies().is_empty() {
            let ids: Vec<StringValue> = d.policies().iter().take(MAX_POLICY_IDS).map(|p| p.clone().into()).collect();
            attrs.push(KeyValue::new("portcullis.policy_ids", Value::Array(Array::String(ids))));
        }
        if let Some(s) = self.store.load() {
            attrs.push(KeyValue::new("portcullis.policy.version", s.version.clone()));
        }
        if !d.request_id().is_empty() {
            attrs.push(KeyValue::new("portcullis.request_id", d.request_id().to_owned()));
        }
        let methods = d.audit().authn.as_str();
        if !methods.is_empty() {
            let m: Vec<StringValue> = methods.split(',').map(StringValue::from).collect();
            attrs.push(KeyValue::new("portcullis.authn.methods", Value::Array(Array::String(m))));
        }
        if let Some(c) = d.audit().token_cache {
            attrs.push(KeyValue::new("portcullis.token_cache", c));
        }
        // The candidate (shadow) set's view, when one was evaluated: never in headers.
        if let Some(sh) = d.shadow() {
            attrs.push(KeyValue::new("portcullis.shadow.decision", sh.verdict()));
            let ids: Vec<StringValue> = sh.policies.iter().take(MAX_POLICY_IDS).map(|p| p.clone().into()).collect();
            attrs.push(KeyValue::new("portcullis.shadow.policy_ids", Value::Array(Array::String(ids))));
            attrs.push(KeyValue::new("portcullis.shadow.version", sh.version.clone()));
        }
        span.set_attributes(attrs);
        // A denial is the check working; only a failure to decide is an error.
        if status >= 500 {
            span.set_status(Status::error(d.reason()));
        }
        span.end();
    }

    /// Exports what is queued, for at most `timeout`; later spans are dropped. Blocks: call it
    /// off the runtime's worker threads.
    pub(crate) fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "trace export did not finish at shutdown");
        }
    }
}

/// `User` from `User::"alice"`, `Ns::Service` from `Ns::Service::"x"`; `None` before authorization.
fn principal_type(principal: &str) -> Option<&str> {
    principal.rfind("::\"").map(|i| &principal[..i]).filter(|t| !t.is_empty())
}

/// Drops (and counts) ended spans once `capacity` are waiting for export, so the SDK's queue
/// never overflows silently; the rest goes to the batch processor unchanged.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    /// Spans handed to `inner` and not yet through an export (queued or being exported).
    pending: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            DROPPED.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Releases [`Bounded`]'s slots once a batch is through, counting a failed batch as dropped.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let res = self.inner.export(batch).await;
        self.pending.fetch_sub(n, Ordering::AcqRel);
        if res.is_err() {
            DROPPED.inc_by(n as u64);
        }
        res
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_type_is_the_entity_type_only() {
        assert_eq!(principal_type("User::\"alice\""), Some("User"));
        assert_eq!(principal_type("Ns::Service::\"spiffe://x\""), Some("Ns::Service"));
        assert_eq!(principal_type("User::\"a::\\\"b\""), Some("User"));
        assert_eq!(principal_type(""), None);
    }

    #[test]
    fn yaml_wins_over_env_which_wins_over_defaults() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let cfg = TracesConfig::default();
        let r = resolve(&cfg, env(&[])).unwrap();
        assert_eq!(r, Resolved { endpoint: "http://localhost:4317".into(), sampler: SamplerChoice::ParentBased(1.0) });
        let r = resolve(
            &cfg,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ]),
        )
        .unwrap();
        assert_eq!(r, Resolved { endpoint: "http://traces:4317".into(), sampler: SamplerChoice::ParentBased(0.5) });
        let yaml = TracesConfig { endpoint: Some("http://yaml:4317".into()), sampler_ratio: Some(0.1), ..cfg.clone() };
        let r = resolve(
            &yaml,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"), ("OTEL_TRACES_SAMPLER", "always_on")]),
        )
        .unwrap();
        assert_eq!(r, Resolved { endpoint: "http://yaml:4317".into(), sampler: SamplerChoice::ParentBased(0.1) });
        assert_eq!(
            resolve(&cfg, env(&[("OTEL_TRACES_SAMPLER", "always_on")])).unwrap().sampler,
            SamplerChoice::Ratio(1.0)
        );

        for (bad, names) in [
            (&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")][..], "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")][..], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (&[("OTEL_TRACES_SAMPLER", "jaeger_remote")][..], "OTEL_TRACES_SAMPLER"),
            (
                &[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")][..],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
        ] {
            let bad: &'static [(&'static str, &'static str)] = bad;
            let err = resolve(&cfg, env(bad)).unwrap_err().to_string();
            assert!(err.contains(names), "{err}");
        }
        // An explicit `protocol: grpc` in YAML wins over a conflicting environment.
        let grpc = TracesConfig { protocol: Some(TraceProtocol::Grpc), ..cfg };
        assert!(resolve(&grpc, env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])).is_ok());
    }
}
