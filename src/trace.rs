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

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
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

/// One header of the raw request, read from `header_map` or `headers`; `None` when absent,
/// not UTF-8, too long, or present more than once (ambiguous context is no context).
fn raw_header<'a>(req: &'a CheckRequestIn, name: &str) -> Option<&'a str> {
    let http = req.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
    let mut found: Option<&str> = None;
    if let Some(m) = &http.header_map {
        for h in m.headers.iter().filter(|h| h.key.eq_ignore_ascii_case(name)) {
            if found.is_some() {
                return None;
            }
            found = Some(if h.value.is_empty() { std::str::from_utf8(&h.raw_value).ok()? } else { &h.value });
        }
    }
    if found.is_none() {
        // The merged `headers` entries, read the same way: a name sent twice is ambiguous.
        for h in http.headers.iter().filter(|h| h.key.eq_ignore_ascii_case(name)) {
            if found.is_some() {
                return None;
            }
            found = Some(&h.value);
        }
    }
    found.filter(|v| v.len() <= MAX_CONTEXT_HEADER.max(MAX_TRACESTATE))
}

/// The trace id a request carries (W3C, else B3), for the decision log; `None` when there is
/// none or it is malformed. The same reading as the span's parent.
pub(crate) fn request_trace_id(req: &CheckRequestIn) -> Option<u128> {
    match parent(|name| raw_header(req, name)) {
        Parent::Remote(sc) => Some(u128::from_be_bytes(sc.trace_id().to_bytes())),
        Parent::Unsampled | Parent::None => None,
    }
}

/// The trace context a request carries.
#[derive(Debug, PartialEq)]
pub(crate) enum Parent {
    /// A valid remote parent (sampled or not: the sampler decides).
    Remote(SpanContext),
    /// B3 said "do not sample" without ids (`b3: 0`, or `x-b3-sampled: 0` alone): no span.
    Unsampled,
    /// No (valid) context: this check starts a trace, subject to the root sampler.
    None,
}

/// Reads the trace context: W3C `traceparent` (+ `tracestate`) first, then B3 single (`b3`),
/// then B3 multi (`x-b3-*`). Malformed values are ignored, never an error: the check goes on.
pub(crate) fn parent<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Parent {
    if let Some(sc) = header("traceparent").and_then(parse_traceparent) {
        let state = header("tracestate")
            .filter(|s| s.len() <= MAX_TRACESTATE)
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        return Parent::Remote(SpanContext::new(sc.trace_id(), sc.span_id(), sc.trace_flags(), true, state));
    }
    if let Some(p) = header("b3").and_then(parse_b3_single) {
        return p;
    }
    parse_b3_multi(&header)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_lower_hex(s: &str) -> bool {
    is_hex(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// W3C Trace Context `traceparent`: `version-traceid-parentid-flags`, lower-case hex.
fn parse_traceparent(v: &str) -> Option<SpanContext> {
    let v = v.trim();
    if v.len() > MAX_CONTEXT_HEADER {
        return None;
    }
    let mut parts = v.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version ff is invalid; version 00 has exactly four fields (later versions may add more).
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !is_lower_hex(trace) || !is_lower_hex(span) || !is_lower_hex(flags) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    remote(trace, span, flags & 1 == 1)
}

/// A valid remote span context from hex ids (a 64-bit B3 trace id is left-padded to 128 bits).
fn remote(trace: &str, span: &str, sampled: bool) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    Some(SpanContext::new(trace_id, span_id, flags, true, TraceState::NONE))
}

/// B3 ids: a trace id of 16 or 32 hex digits, a span id of 16.
fn b3_ids(trace: &str, span: &str) -> bool {
    (trace.len() == 16 || trace.len() == 32) && span.len() == 16 && is_hex(trace) && is_hex(span)
}

/// B3 sampling state: `1`/`d` (debug) sampled, `0` not; absent means "deferred", which is
/// followed as sampled (the caller decided to propagate a trace).
fn b3_sampled(s: Option<&str>) -> Option<bool> {
    match s.map(str::trim) {
        None | Some("1") | Some("d") | Some("true") => Some(true),
        Some("0") | Some("false") => Some(false),
        Some(_) => None,
    }
}

/// B3 single header: `traceid-spanid[-sampled[-parentspanid]]`, or only the sampling state.
fn parse_b3_single(v: &str) -> Option<Parent> {
    let v = v.trim();
    if v.len() > MAX_CONTEXT_HEADER {
        return None;
    }
    match v {
        "0" => return Some(Parent::Unsampled),
        // A sampling state without ids: this check starts the trace.
        "1" | "d" => return Some(Parent::None),
        _ => {}
    }
    let mut parts = v.split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    let sampled = b3_sampled(parts.next())?;
    if let Some(parent_span) = parts.next()
        && (parent_span.len() != 16 || !is_hex(parent_span))
    {
        return None;
    }
    if parts.next().is_some() || !b3_ids(trace, span) {
        return None;
    }
    let trace = format!("{trace:0>32}").to_ascii_lowercase();
    remote(&trace, &span.to_ascii_lowercase(), sampled).map(Parent::Remote)
}

/// B3 multi headers: `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags: 1` (debug).
fn parse_b3_multi<'a>(header: &impl Fn(&str) -> Option<&'a str>) -> Parent {
    let debug = header("x-b3-flags").is_some_and(|f| f.trim() == "1");
    let sampled = if debug { Some(true) } else { b3_sampled(header("x-b3-sampled")) };
    let (Some(trace), Some(span)) = (header("x-b3-traceid"), header("x-b3-spanid")) else {
        return if sampled == Some(false) { Parent::Unsampled } else { Parent::None };
    };
    let (trace, span) = (trace.trim(), span.trim());
    let Some(sampled) = sampled else { return Parent::None };
    if !b3_ids(trace, span) {
        return Parent::None;
    }
    let trace = format!("{trace:0>32}").to_ascii_lowercase();
    remote(&trace, &span.to_ascii_lowercase(), sampled).map_or(Parent::None, Parent::Remote)
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

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
    }

    fn remote_ids(p: Parent) -> (String, String, bool) {
        match p {
            Parent::Remote(sc) => (sc.trace_id().to_string(), sc.span_id().to_string(), sc.is_sampled()),
            other => panic!("expected a remote parent, got {other:?}"),
        }
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn w3c_traceparent_and_tracestate_are_read() {
        let p = parent(headers(&[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")]));
        let Parent::Remote(sc) = p else { panic!("{p:?}") };
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(sc.trace_state().get("congo"), Some("t61rcWkgMzE"));
        let unsampled = TP.replace("-01", "-00");
        assert!(!remote_ids(parent(headers(&[("traceparent", &unsampled)]))).2);
    }

    #[test]
    fn malformed_traceparent_is_no_parent() {
        let long = format!("{TP}{}", "0".repeat(300));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            &long,
        ] {
            assert_eq!(parent(headers(&[("traceparent", bad)])), Parent::None, "{bad}");
        }
        // A bad tracestate does not cost the parent.
        let p = parent(headers(&[("traceparent", TP), ("tracestate", "=,,not valid")]));
        assert_eq!(remote_ids(p).1, "00f067aa0ba902b7");
    }

    #[test]
    fn b3_single_and_multi_are_read() {
        let (t, s, sampled) = remote_ids(parent(headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )])));
        assert_eq!((t.as_str(), s.as_str(), sampled), ("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", true));
        // A 64-bit trace id is left-padded; no sampling state is "deferred", followed as sampled.
        let (t, _, sampled) = remote_ids(parent(headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")])));
        assert_eq!((t.as_str(), sampled), ("0000000000000000a3ce929d0e0e4736", true));
        assert!(!remote_ids(parent(headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")]))).2);
        assert_eq!(parent(headers(&[("b3", "0")])), Parent::Unsampled);
        assert_eq!(parent(headers(&[("b3", "1")])), Parent::None);

        let multi = [
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ];
        let (t, s, sampled) = remote_ids(parent(headers(&multi)));
        assert_eq!((t.as_str(), s.as_str(), sampled), ("463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312", true));
        let unsampled = [multi[0], multi[1], ("x-b3-sampled", "0")];
        assert!(!remote_ids(parent(headers(&unsampled))).2);
        let debug = [multi[0], multi[1], ("x-b3-sampled", "0"), ("x-b3-flags", "1")];
        assert!(remote_ids(parent(headers(&debug))).2);
        assert_eq!(parent(headers(&[("x-b3-sampled", "0")])), Parent::Unsampled);
        // W3C wins over B3 when both are present.
        let both = [("traceparent", TP), multi[0], multi[1]];
        assert_eq!(remote_ids(parent(headers(&both))).1, "00f067aa0ba902b7");
    }

    #[test]
    fn malformed_b3_is_no_parent() {
        for bad in [
            "x",
            "80f198ee56343ba864fe8b2a57d3eff7",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd-1",
            "80f198ee56343ba8-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
            "80f198ee56343ba8-e457b5a2e4d86bd1-1-zz",
            "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff-e457b5a2e4d86bd1",
        ] {
            assert_eq!(parent(headers(&[("b3", bad)])), Parent::None, "{bad}");
        }
        let bad_trace = [("x-b3-traceid", "zz"), ("x-b3-spanid", "a2fb4a1d1a96d312")];
        let short_span = [("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d31")];
        let bad_sampled =
            [("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-sampled", "2")];
        assert_eq!(parent(headers(&bad_trace)), Parent::None);
        assert_eq!(parent(headers(&short_span)), Parent::None);
        assert_eq!(parent(headers(&bad_sampled)), Parent::None);
    }

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
