//! The trace context a check's request carries: W3C `traceparent` (+ `tracestate`) first, then
//! B3 single (`b3`), then B3 multi (`x-b3-*`). Malformed, oversized or repeated values are no
//! context, never an error: the check goes on.
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use super::{MAX_CONTEXT_HEADER, MAX_TRACESTATE};
use crate::proto::auth::CheckRequestIn;

/// One header of the raw request, read from `header_map` or `headers`; `None` when absent,
/// not UTF-8, too long, or present more than once (ambiguous context is no context).
pub(super) fn raw_header<'a>(req: &'a CheckRequestIn, name: &str) -> Option<&'a str> {
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
/// none or it is malformed. The same reading as the span's parent ([`parent`]), without its
/// `tracestate`, which is no part of the id (every check reads this: one header scan less).
pub(crate) fn request_trace_id(req: &CheckRequestIn) -> Option<u128> {
    let header = |name: &str| raw_header(req, name);
    let from = match header("traceparent").and_then(parse_traceparent) {
        Some(sc) => Parent::Remote(sc),
        None => b3(&header),
    };
    match from {
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
    b3(&header)
}

/// B3 single (`b3`), else B3 multi (`x-b3-*`).
fn b3<'a>(header: &impl Fn(&str) -> Option<&'a str>) -> Parent {
    if let Some(p) = header("b3").and_then(parse_b3_single) {
        return p;
    }
    parse_b3_multi(header)
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

/// The value of 1 to 32 hex digits, either case; `None` for anything else. (The ids' own
/// `from_hex` goes through `from_str_radix`, which also takes a sign; every check that carries
/// a trace context runs this.)
fn hex_value(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    s.bytes().try_fold(0u128, |v, b| Some(v << 4 | u128::from(char::from(b).to_digit(16)?)))
}

/// A valid remote span context from hex ids: a trace id of up to 32 digits (a 64-bit B3 trace id
/// is the same value left-padded to 128 bits), a span id of up to 16; neither all zeros.
fn remote(trace: &str, span: &str, sampled: bool) -> Option<SpanContext> {
    let trace_id = hex_value(trace).filter(|&t| t != 0).map(|t| TraceId::from_bytes(t.to_be_bytes()))?;
    let span_id = hex_value(span)
        .filter(|&s| s != 0 && span.len() <= 16)
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| SpanId::from_bytes(s.to_be_bytes()))?;
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
    remote(trace, span, sampled).map(Parent::Remote)
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
    remote(trace, span, sampled).map_or(Parent::None, Parent::Remote)
}

#[cfg(test)]
mod tests;
