//! Normalizes an Envoy `CheckRequest` once into a [`RequestView`]: the only place that reads the
//! request side of the wire types. Everything downstream sees canonical, bounded values.
//!
//! The request arrives as [`CheckRequestIn`] (build.rs): the merged `headers` map decoded as the
//! list of entries it is on the wire, so the view borrows them in arrival order, and a name sent
//! twice is seen twice (counted, refused where singular) rather than silently last-wins. A
//! standard `CheckRequest` goes through [`crate::proto::check_in`] first.
use std::borrow::Cow;
use std::net::IpAddr;

use crate::config::{CedarConfig, Limits, MatrixParameters};
use crate::proto::auth::{AttributeContextIn, CheckRequestIn, HttpRequestIn, attribute_context};
use crate::proto::core::{Address, Metadata, address};

/// Why a request could not be normalized. Each is refused (400), never guessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request has no HTTP attributes")]
    MissingHttp,
    #[error("request has no method")]
    MissingMethod,
    #[error("method is not a valid token")]
    BadMethod,
    #[error("path is empty or not absolute")]
    BadPath,
    #[error("path is longer than the configured limit")]
    PathTooLong,
    #[error("path contains an encoded slash or backslash")]
    EncodedSeparator,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains an invalid or control-character percent escape")]
    BadEscape,
    #[error("path climbs above the root")]
    AboveRoot,
    #[error("path has a dot segment with parameters (`..;`)")]
    DotSegmentParameter,
    #[error("path has a `..` segment after an empty segment (`//`), which upstreams resolve differently")]
    AmbiguousDotSegment,
    #[error("path has a matrix parameter (`;`)")]
    PathParameter,
    #[error("path has a fragment (`#`)")]
    PathFragment,
    #[error("too many headers")]
    TooManyHeaders,
    #[error("header names and values add up to more bytes than the limit")]
    HeadersTooLarge,
    #[error("host is not valid")]
    BadHost,
    #[error("method and `:method` disagree")]
    ConflictingMethod,
    #[error("path and `:path` disagree")]
    ConflictingPath,
    #[error("host, `:authority` and `host` disagree")]
    ConflictingHost,
    #[error("a pseudo-header or `host` occurs more than once")]
    DuplicatePseudoHeader,
    #[error("more route facts (context extensions and metadata strings) than the limit")]
    TooManyRouteFacts,
    #[error("a route fact key or value is longer than the limit")]
    RouteFactTooLong,
}

impl RequestError {
    /// Bounded label for metrics and the machine-readable reason.
    pub fn label(&self) -> &'static str {
        match self {
            RequestError::MissingHttp => "missing_http",
            RequestError::MissingMethod => "missing_method",
            RequestError::BadMethod => "bad_method",
            RequestError::BadPath => "bad_path",
            RequestError::PathTooLong => "path_too_long",
            RequestError::EncodedSeparator => "encoded_separator",
            RequestError::Backslash => "backslash",
            RequestError::BadEscape => "bad_escape",
            RequestError::AboveRoot => "above_root",
            RequestError::DotSegmentParameter => "dot_segment_parameter",
            RequestError::AmbiguousDotSegment => "ambiguous_dot_segment",
            RequestError::PathParameter => "path_parameter",
            RequestError::PathFragment => "path_fragment",
            RequestError::TooManyHeaders => "too_many_headers",
            RequestError::HeadersTooLarge => "headers_too_large",
            RequestError::BadHost => "bad_host",
            RequestError::ConflictingMethod => "conflicting_method",
            RequestError::ConflictingPath => "conflicting_path",
            RequestError::ConflictingHost => "conflicting_host",
            RequestError::DuplicatePseudoHeader => "duplicate_pseudo_header",
            RequestError::TooManyRouteFacts => "too_many_route_facts",
            RequestError::RouteFactTooLong => "route_fact_too_long",
        }
    }
}

/// A request that could not be normalized, with the request id it arrived with (read as
/// [`RequestView::request_id`] would be), so even a refusal (400) can be matched to Envoy's
/// access log. The id is raw: whoever echoes it bounds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct InvalidRequest {
    pub kind: RequestError,
    pub request_id: String,
}

impl InvalidRequest {
    /// Bounded label for metrics and the machine-readable reason.
    pub fn label(&self) -> &'static str {
        self.kind.label()
    }
}

/// Most route facts one request may carry (context extensions plus metadata strings of the
/// configured namespaces). More is a 400, never a silent truncation.
pub const MAX_ROUTE_FACTS: usize = 64;
/// Longest route fact key (an extension key or a metadata field name), in bytes.
pub const MAX_ROUTE_FACT_KEY_BYTES: usize = 128;
/// Longest route fact value, in bytes.
pub const MAX_ROUTE_FACT_VALUE_BYTES: usize = 1024;

/// Where a route fact came from. All of them are set by Envoy, never read from request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFactSource<'a> {
    /// `attributes.context_extensions` (the route's `ExtAuthzPerRoute.check_settings`).
    Extension,
    /// A string field of `attributes.metadata_context.filter_metadata[<namespace>]`.
    Metadata(&'a str),
    /// A string field of `attributes.route_metadata_context.filter_metadata[<namespace>]`.
    RouteMetadata(&'a str),
}

/// One fact Envoy reported about the matched route, exposed to policies as a `Route` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteFact<'a> {
    pub source: RouteFactSource<'a>,
    pub key: &'a str,
    pub value: &'a str,
}

/// Which metadata namespaces become route facts (`cedar.metadata_namespaces`,
/// `cedar.route_metadata_namespaces`). Context extensions are always read.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteFactNamespaces<'c> {
    pub metadata: &'c [String],
    pub route_metadata: &'c [String],
}

impl<'c> RouteFactNamespaces<'c> {
    /// The namespaces `cedar` configures.
    pub fn of(cedar: &'c CedarConfig) -> Self {
        Self { metadata: &cedar.metadata_namespaces, route_metadata: &cedar.route_metadata_namespaces }
    }
}

/// One normalized view of a check request. Header names and values borrow from the request, and
/// so do the path and host when they arrive canonical already (the common case).
#[derive(Debug, Clone)]
pub struct RequestView<'a> {
    /// Upper-case HTTP method.
    pub method: Cow<'a, str>,
    /// Canonical path without query or fragment.
    pub path: Cow<'a, str>,
    /// Raw query string (without `?`), empty if none.
    pub query: &'a str,
    /// Lower-case host without port.
    pub host: Cow<'a, str>,
    /// `http` / `https`, as Envoy reported it.
    pub scheme: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    /// Names of `header_map` entries whose `raw_value` is not UTF-8 (read as `""` above).
    invalid_values: Vec<&'a str>,
    /// `attributes.source.principal` (SPIFFE id under Istio), if any.
    pub source_principal: Option<&'a str>,
    /// `attributes.destination.principal`, if any.
    pub destination_principal: Option<&'a str>,
    /// Source IP, if Envoy sent a socket address.
    pub source_ip: Option<IpAddr>,
    /// Envoy's request id, or `x-request-id`, or empty.
    pub request_id: &'a str,
    /// W3C `traceparent`, if present.
    pub traceparent: Option<&'a str>,
    /// What Envoy reported about the route (never taken from headers), bounded.
    pub route_facts: Vec<RouteFact<'a>>,
    /// `context.time` (unix seconds) instead of the clock; never from the wire, only set by
    /// `portcullis test` so cases on time are deterministic.
    pub time: Option<i64>,
    /// The body as Envoy sent it (`body`, or `raw_body` with `pack_as_bytes`); read only when a
    /// policy's schema declares one, through [`RequestView::body`].
    body_text: &'a str,
    raw_body: &'a [u8],
}

impl<'a> RequestView<'a> {
    /// Normalizes a check request under the configured limits, refusing matrix parameters
    /// (the default `request.matrix_parameters: refuse`).
    pub fn from_check(req: &'a CheckRequestIn, limits: &Limits) -> Result<Self, InvalidRequest> {
        Self::from_check_with(req, limits, MatrixParameters::Refuse)
    }

    /// Normalizes a check request under the configured limits and matrix-parameter mode.
    /// No metadata namespace is read; context extensions are.
    pub fn from_check_with(
        req: &'a CheckRequestIn,
        limits: &Limits,
        matrix: MatrixParameters,
    ) -> Result<Self, InvalidRequest> {
        Self::from_check_route(req, limits, matrix, RouteFactNamespaces::default())
    }

    /// Normalizes a check request, also reading the string metadata of the given namespaces.
    pub fn from_check_route(
        req: &'a CheckRequestIn,
        limits: &Limits,
        matrix: MatrixParameters,
        namespaces: RouteFactNamespaces<'_>,
    ) -> Result<Self, InvalidRequest> {
        Self::normalize(req, limits, matrix, namespaces)
            .map_err(|kind| InvalidRequest { kind, request_id: raw_request_id(req).to_owned() })
    }

    fn normalize(
        req: &'a CheckRequestIn,
        limits: &Limits,
        matrix: MatrixParameters,
        namespaces: RouteFactNamespaces<'_>,
    ) -> Result<Self, RequestError> {
        let attrs: &'a AttributeContextIn = req.attributes.as_ref().ok_or(RequestError::MissingHttp)?;
        let http = attrs.request.as_ref().and_then(|r| r.http.as_ref()).ok_or(RequestError::MissingHttp)?;
        let (headers, invalid_values) = collect_headers(http, limits)?;
        let lookup = |name: &str| {
            headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v).filter(|v| !v.is_empty())
        };
        // One method, one path, one host: a second copy could be the one the upstream reads.
        for (i, (k, _)) in headers.iter().enumerate() {
            let singular = k.starts_with(':') || k.eq_ignore_ascii_case("host");
            if singular && headers[..i].iter().any(|(p, _)| p.eq_ignore_ascii_case(k)) {
                return Err(RequestError::DuplicatePseudoHeader);
            }
        }

        let method_raw = non_empty(&http.method).or_else(|| lookup(":method")).ok_or(RequestError::MissingMethod)?;
        if lookup(":method").is_some_and(|m| m != method_raw) {
            return Err(RequestError::ConflictingMethod);
        }
        if !method_raw.bytes().all(|b| b.is_ascii_alphabetic()) || method_raw.len() > 16 {
            return Err(RequestError::BadMethod);
        }
        // Borrowed when already upper case (as Envoy sends it): no copy per check.
        let method = if method_raw.bytes().any(|b| b.is_ascii_lowercase()) {
            Cow::Owned(method_raw.to_ascii_uppercase())
        } else {
            Cow::Borrowed(method_raw)
        };

        let raw_path = non_empty(&http.path).or_else(|| lookup(":path")).ok_or(RequestError::BadPath)?;
        if lookup(":path").is_some_and(|p| p != raw_path) {
            return Err(RequestError::ConflictingPath);
        }
        if raw_path.len() > limits.max_path_bytes {
            return Err(RequestError::PathTooLong);
        }
        // A request target never carries a fragment; one that does is read differently by parsers.
        if raw_path.contains('#') {
            return Err(RequestError::PathFragment);
        }
        let (raw_only_path, query) = match raw_path.split_once('?') {
            Some((p, q)) => (p, q),
            None => (raw_path, non_empty(&http.query).unwrap_or("")),
        };
        let path = canonical::path_of(raw_only_path, matrix)?;

        // Every copy of the host must name the same host; each is parsed, so a bad copy is a 400.
        let mut host: Option<Cow<'a, str>> = None;
        let mut parsed: Option<&str> = None;
        for copy in [non_empty(&http.host), lookup(":authority"), lookup("host")].into_iter().flatten() {
            // A byte-identical copy of the one just parsed reads the same (Envoy sends the
            // authority both as `host` and as `:authority`): parsed once.
            if parsed == Some(copy) {
                continue;
            }
            parsed = Some(copy);
            let h = canonical::host_of(copy)?;
            match &host {
                Some(first) if *first != h => return Err(RequestError::ConflictingHost),
                Some(_) => {}
                None => host = Some(h),
            }
        }
        let host = host.unwrap_or_default();

        let peer = |p: &'a Option<attribute_context::Peer>| p.as_ref().and_then(|p| non_empty(&p.principal));
        let source_ip = attrs.source.as_ref().and_then(|p| p.address.as_ref()).and_then(ip_of);
        let route_facts = collect_route_facts(attrs, namespaces)?;

        Ok(RequestView {
            method,
            path,
            query,
            host,
            scheme: non_empty(&http.scheme).or_else(|| lookup(":scheme")).unwrap_or(""),
            source_principal: peer(&attrs.source),
            destination_principal: peer(&attrs.destination),
            source_ip,
            request_id: non_empty(&http.id).or_else(|| lookup("x-request-id")).unwrap_or(""),
            traceparent: lookup("traceparent"),
            route_facts,
            time: None,
            body_text: &http.body,
            raw_body: &http.raw_body,
            headers,
            invalid_values,
        })
    }

    /// First value of a header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    /// Every value of a header joined with `,`, as Envoy's merged `headers` map would show it,
    /// so a policy never sees only the first of two copies while the upstream reads the other.
    pub fn header_joined(&self, name: &str) -> Option<std::borrow::Cow<'a, str>> {
        let mut values = self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
        let first = values.next()?;
        let rest: Vec<&str> = values.collect();
        if rest.is_empty() {
            return Some(std::borrow::Cow::Borrowed(first));
        }
        let mut joined = first.to_owned();
        for v in rest {
            joined.push(',');
            joined.push_str(v);
        }
        Some(std::borrow::Cow::Owned(joined))
    }

    /// How many times a header occurs (raw `header_map` keeps duplicates).
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).count()
    }

    /// Whether some copy of a header arrived as bytes that are not UTF-8 (Envoy `raw_value`).
    /// Such a copy is counted by [`Self::header_count`] and reads as `""`; a credential in it
    /// must be refused, never read as absent.
    pub fn has_invalid_value(&self, name: &str) -> bool {
        self.invalid_values.iter().any(|k| k.eq_ignore_ascii_case(name))
    }

    /// All headers, in arrival order.
    pub fn headers(&self) -> &[(&'a str, &'a str)] {
        &self.headers
    }

    /// The request body with what is needed to read it (nothing is parsed here).
    pub fn body(&self) -> RequestBody<'a> {
        let partial = self
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(body::PARTIAL_BODY_HEADER) && v.trim().eq_ignore_ascii_case("true"));
        RequestBody { text: self.body_text, raw: self.raw_body, partial, content_type: self.header("content-type") }
    }

    /// `(service, method)` of a gRPC call: a POST with a `application/grpc…` content type to
    /// `/<package.Service>/<Method>` (the canonical path, so no escapes).
    pub fn grpc(&self) -> Option<(&str, &str)> {
        let ct = self.header("content-type")?;
        let is_grpc = ct.get(..16).is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"));
        if self.method != "POST" || !is_grpc || !self.query.is_empty() {
            return None;
        }
        let (service, method) = self.path.strip_prefix('/')?.split_once('/')?;
        (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
    }
}

/// The request id of a request that could not be normalized, read the same way as
/// [`RequestView::request_id`] (Envoy's `id`, else `x-request-id`).
pub(crate) fn raw_request_id(req: &CheckRequestIn) -> &str {
    let Some(http) = req.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()) else {
        return "";
    };
    if !http.id.is_empty() {
        return &http.id;
    }
    let from_map = http.header_map.as_ref().and_then(|m| {
        m.headers.iter().find(|h| h.key.eq_ignore_ascii_case("x-request-id")).map(|h| {
            if h.value.is_empty() { std::str::from_utf8(&h.raw_value).unwrap_or("") } else { h.value.as_str() }
        })
    });
    from_map
        .or_else(|| http.headers.iter().find(|h| h.key.eq_ignore_ascii_case("x-request-id")).map(|h| h.value.as_str()))
        .unwrap_or("")
}

fn non_empty(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}

/// Headers in arrival order, and the names of those whose raw value is not UTF-8 (kept in the
/// list with an empty value, so they are still counted and never mistaken for absent).
type Collected<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);

fn collect_headers<'a>(http: &'a HttpRequestIn, limits: &Limits) -> Result<Collected<'a>, RequestError> {
    let raw = http.header_map.as_ref().map(|m| m.headers.as_slice()).unwrap_or(&[]);
    if raw.len() + http.headers.len() > limits.max_headers {
        return Err(RequestError::TooManyHeaders);
    }
    // Both representations count (Envoy fills one), so neither can smuggle bytes past the cap.
    let bytes = raw.iter().map(|h| h.key.len() + h.value.len() + h.raw_value.len()).sum::<usize>()
        + http.headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>();
    if bytes > limits.max_header_bytes {
        return Err(RequestError::HeadersTooLarge);
    }
    let mut out = Vec::with_capacity(raw.len() + http.headers.len());
    let mut invalid = Vec::new();
    for h in raw {
        // Envoy puts the value in `raw_value` when `encode_raw_headers` is on.
        let v = if h.value.is_empty() {
            match std::str::from_utf8(&h.raw_value) {
                Ok(v) => v,
                Err(_) => {
                    invalid.push(h.key.as_str());
                    ""
                }
            }
        } else {
            h.value.as_str()
        };
        out.push((h.key.as_str(), v));
    }
    // Only fall back to the merged map when the raw one is absent, so a header is not seen twice.
    // Its entries come in wire order, a repeated name included (Envoy never repeats one; a
    // hostile client may, and then both copies are seen, as in `header_map`).
    if raw.is_empty() {
        for h in &http.headers {
            out.push((h.key.as_str(), h.value.as_str()));
        }
    }
    Ok((out, invalid))
}

/// Which [`RouteFactSource`] a metadata namespace's facts get.
type NamespacedSource<'a> = fn(&'a str) -> RouteFactSource<'a>;

/// Context extensions, then the string fields of the configured metadata namespaces, in a
/// stable order (the wire maps are unordered). Non-string metadata values are not exposed.
/// Over the count or a length limit is refused, never truncated.
fn collect_route_facts<'a>(
    attrs: &'a AttributeContextIn,
    namespaces: RouteFactNamespaces<'_>,
) -> Result<Vec<RouteFact<'a>>, RequestError> {
    let mut out = Vec::new();
    let mut push = |source, key: &'a str, value: &'a str| {
        if out.len() >= MAX_ROUTE_FACTS {
            return Err(RequestError::TooManyRouteFacts);
        }
        if key.len() > MAX_ROUTE_FACT_KEY_BYTES || value.len() > MAX_ROUTE_FACT_VALUE_BYTES {
            return Err(RequestError::RouteFactTooLong);
        }
        out.push(RouteFact { source, key, value });
        Ok(())
    };
    let mut ext: Vec<(&'a String, &'a String)> = attrs.context_extensions.iter().collect();
    ext.sort();
    for (k, v) in ext {
        push(RouteFactSource::Extension, k, v)?;
    }
    let sources: [(&'a Option<Metadata>, &[String], NamespacedSource<'a>); 2] = [
        (&attrs.metadata_context, namespaces.metadata, RouteFactSource::Metadata),
        (&attrs.route_metadata_context, namespaces.route_metadata, RouteFactSource::RouteMetadata),
    ];
    for (metadata, wanted, source) in sources {
        let Some(metadata) = metadata.as_ref() else { continue };
        for ns in wanted {
            let Some((ns, fields)) = metadata.filter_metadata.get_key_value(ns.as_str()) else { continue };
            let mut strings: Vec<(&'a String, &'a String)> = fields
                .fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(prost_types::value::Kind::StringValue(s)) => Some((k, s)),
                    _ => None,
                })
                .collect();
            strings.sort();
            for (k, v) in strings {
                push(source(ns), k, v)?;
            }
        }
    }
    Ok(out)
}

pub(crate) fn ip_of(addr: &Address) -> Option<IpAddr> {
    match addr.address.as_ref()? {
        address::Address::SocketAddress(sa) => sa.address.parse().ok(),
        address::Address::Pipe(_) => None,
    }
}

pub mod body;
mod canonical;
pub use body::{BodyError, BodyLimits, RequestBody};
pub use canonical::{normalize_host, normalize_path};

#[cfg(test)]
mod tests;
