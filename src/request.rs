//! Normalizes an Envoy `CheckRequest` once into a [`RequestView`]: the only place that reads the
//! request side of the wire types. Everything downstream sees canonical, bounded values.
use std::net::IpAddr;

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::{Limits, MatrixParameters};
use crate::proto::auth::{AttributeContext, CheckRequest, attribute_context};
use crate::proto::core::{Address, address};

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
            RequestError::BadHost => "bad_host",
            RequestError::ConflictingMethod => "conflicting_method",
            RequestError::ConflictingPath => "conflicting_path",
            RequestError::ConflictingHost => "conflicting_host",
            RequestError::DuplicatePseudoHeader => "duplicate_pseudo_header",
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

/// One normalized view of a check request. Header names and values borrow from the request.
#[derive(Debug, Clone)]
pub struct RequestView<'a> {
    /// Upper-case HTTP method.
    pub method: String,
    /// Canonical path without query or fragment.
    pub path: String,
    /// Raw query string (without `?`), empty if none.
    pub query: &'a str,
    /// Lower-case host without port.
    pub host: String,
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
}

impl<'a> RequestView<'a> {
    /// Normalizes a check request under the configured limits, refusing matrix parameters
    /// (the default `request.matrix_parameters: refuse`).
    pub fn from_check(req: &'a CheckRequest, limits: &Limits) -> Result<Self, InvalidRequest> {
        Self::from_check_with(req, limits, MatrixParameters::Refuse)
    }

    /// Normalizes a check request under the configured limits and matrix-parameter mode.
    pub fn from_check_with(
        req: &'a CheckRequest,
        limits: &Limits,
        matrix: MatrixParameters,
    ) -> Result<Self, InvalidRequest> {
        Self::normalize(req, limits, matrix)
            .map_err(|kind| InvalidRequest { kind, request_id: raw_request_id(req).to_owned() })
    }

    fn normalize(req: &'a CheckRequest, limits: &Limits, matrix: MatrixParameters) -> Result<Self, RequestError> {
        let attrs: &'a AttributeContext = req.attributes.as_ref().ok_or(RequestError::MissingHttp)?;
        let http = attrs.request.as_ref().and_then(|r| r.http.as_ref()).ok_or(RequestError::MissingHttp)?;
        let (headers, invalid_values) = collect_headers(http, limits.max_headers)?;
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
        let method = method_raw.to_ascii_uppercase();

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
        let path = normalize_path(raw_only_path, matrix)?;

        // Every copy of the host must name the same host; each is parsed, so a bad copy is a 400.
        let mut host: Option<String> = None;
        for copy in [non_empty(&http.host), lookup(":authority"), lookup("host")].into_iter().flatten() {
            let h = normalize_host(copy)?;
            match &host {
                Some(first) if *first != h => return Err(RequestError::ConflictingHost),
                Some(_) => {}
                None => host = Some(h),
            }
        }
        let host = host.unwrap_or_default();

        let peer = |p: &'a Option<attribute_context::Peer>| p.as_ref().and_then(|p| non_empty(&p.principal));
        let source_ip = attrs.source.as_ref().and_then(|p| p.address.as_ref()).and_then(ip_of);

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
}

/// The request id of a request that could not be normalized, read the same way as
/// [`RequestView::request_id`] (Envoy's `id`, else `x-request-id`).
fn raw_request_id(req: &CheckRequest) -> &str {
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
        .or_else(|| http.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("x-request-id")).map(|(_, v)| v.as_str()))
        .unwrap_or("")
}

fn non_empty(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}

/// Headers in arrival order, and the names of those whose raw value is not UTF-8 (kept in the
/// list with an empty value, so they are still counted and never mistaken for absent).
type Collected<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);

fn collect_headers(http: &attribute_context::HttpRequest, max: usize) -> Result<Collected<'_>, RequestError> {
    let raw = http.header_map.as_ref().map(|m| m.headers.as_slice()).unwrap_or(&[]);
    if raw.len() + http.headers.len() > max {
        return Err(RequestError::TooManyHeaders);
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
    if raw.is_empty() {
        for (k, v) in &http.headers {
            out.push((k.as_str(), v.as_str()));
        }
    }
    Ok((out, invalid))
}

fn ip_of(addr: &Address) -> Option<IpAddr> {
    match addr.address.as_ref()? {
        address::Address::SocketAddress(sa) => sa.address.parse().ok(),
        address::Address::Pipe(_) => None,
    }
}

/// Canonicalizes a host (`:authority`): a DNS name, a dotted-quad IPv4 address or a bracketed
/// IPv6 literal, with an optional port that is dropped. Lower-cased; one trailing dot removed.
/// Anything else is refused: a name that WHATWG would read as an IPv4 number (`127.1`,
/// `0x7f.0.0.1`, `2130706433`) is refused rather than decided on as a name. IPv6 comes back
/// without brackets, in RFC 5952 form (`[0:0::1]` is `::1`).
pub fn normalize_host(raw: &str) -> Result<String, RequestError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(RequestError::BadHost)?;
        if !after.is_empty() {
            check_port(after.strip_prefix(':').ok_or(RequestError::BadHost)?)?;
        }
        let ip: Ipv6Addr = inner.parse().map_err(|_| RequestError::BadHost)?;
        return Ok(ip.to_string());
    }
    let host = match raw.split_once(':') {
        Some((h, port)) => {
            check_port(port)?;
            h
        }
        None => raw,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err(RequestError::BadHost);
    }
    let host = host.to_ascii_lowercase();
    let mut last = "";
    for label in host.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(RequestError::BadHost);
        }
        last = label;
    }
    // WHATWG parses a host whose last label is a number as IPv4 (decimal, octal or hex parts,
    // fewer than four parts): accept only the one canonical spelling of an address.
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last.strip_prefix("0x").is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        let ip: Ipv4Addr = host.parse().map_err(|_| RequestError::BadHost)?;
        if ip.to_string() != host {
            return Err(RequestError::BadHost);
        }
    }
    Ok(host)
}

/// A port is 1–65535 in plain digits.
fn check_port(port: &str) -> Result<(), RequestError> {
    let ok = (1..=5).contains(&port.len())
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    if ok { Ok(()) } else { Err(RequestError::BadHost) }
}

/// Canonicalizes a path (without query). Percent-escapes of unreserved characters are decoded
/// (so `%2e%2e` is `..`), other escapes upper-cased; dot segments are removed as RFC 3986 §5.2.4
/// does, with empty segments counting; duplicate slashes are merged after that, which cannot
/// change what a `..` removes because a `..` after an empty segment (`/a//../b`: `/a/b` by RFC
/// 3986 and Envoy, `/b` by slash-merging servers) is refused. A trailing slash is kept (a
/// trailing `.` or `..` leaves one, as in RFC 3986).
///
/// Refused: encoded `/` or `\`, raw `\`, NUL/control escapes, climbing above `/`, a fragment,
/// dot segments with parameters (`..;x`, which servlet containers read as `..`), and any other
/// `;` (also `%3B`) unless `matrix` is [`MatrixParameters::Strip`], which removes `;…` from every
/// segment before dot segments are resolved.
pub fn normalize_path(raw: &str, matrix: MatrixParameters) -> Result<String, RequestError> {
    if !raw.starts_with('/') {
        return Err(RequestError::BadPath);
    }
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(RequestError::BadEscape);
                };
                let v = (hi * 16 + lo) as u8;
                match v {
                    b'/' | b'\\' => return Err(RequestError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(RequestError::BadEscape),
                    // `%3B` is a `;` to every servlet container: treat it as one.
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b';' => {
                        decoded.push(v as char)
                    }
                    _ => {
                        decoded.push('%');
                        decoded.push(char::from_digit(hi, 16).unwrap_or('0').to_ascii_uppercase());
                        decoded.push(char::from_digit(lo, 16).unwrap_or('0').to_ascii_uppercase());
                    }
                }
                i += 3;
            }
            b'\\' => return Err(RequestError::Backslash),
            b'#' => return Err(RequestError::PathFragment),
            // The query is split off before; a `?` here means the caller passed one.
            b'?' | 0..=0x20 | 0x7f => return Err(RequestError::BadPath),
            _ => {
                // Multi-byte UTF-8 passes through unchanged; the input is a valid &str.
                let ch_len = utf8_len(b);
                decoded.push_str(&raw[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    // `decoded` starts with `/`: its segments are what follows each `/`.
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut seen_empty = false;
    let mut trailing_slash = false;
    for (i, seg) in segments.into_iter().enumerate() {
        let seg = match seg.split_once(';') {
            None => seg,
            Some(("." | "..", _)) => return Err(RequestError::DotSegmentParameter),
            Some((base, _)) => match matrix {
                MatrixParameters::Refuse => return Err(RequestError::PathParameter),
                MatrixParameters::Strip => base,
            },
        };
        match seg {
            "." => {}
            ".." => {
                if seen_empty {
                    return Err(RequestError::AmbiguousDotSegment);
                }
                if out.pop().is_none() {
                    return Err(RequestError::AboveRoot);
                }
            }
            // Merged: no `..` may follow it, so dropping it cannot change what a `..` removes.
            "" => seen_empty = true,
            s => out.push(s),
        }
        if i == last {
            trailing_slash = matches!(seg, "" | "." | "..");
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::auth::attribute_context::{HttpRequest, Request};
    use crate::proto::core::{HeaderMap, HeaderValue};

    fn norm(p: &str) -> Result<String, RequestError> {
        normalize_path(p, MatrixParameters::Refuse)
    }

    fn strip(p: &str) -> Result<String, RequestError> {
        normalize_path(p, MatrixParameters::Strip)
    }

    #[test]
    fn dot_segments_and_duplicate_slashes_collapse() {
        assert_eq!(norm("/a/b/./c/../d").unwrap(), "/a/b/d");
        assert_eq!(norm("/a//b/./c/d").unwrap(), "/a/b/c/d");
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("//").unwrap(), "/");
        assert_eq!(norm("/a/b/").unwrap(), "/a/b/");
        assert_eq!(norm("/a//").unwrap(), "/a/");
        assert_eq!(norm("/a/./b").unwrap(), "/a/b");
        assert_eq!(norm("/a/x/../b").unwrap(), "/a/b");
        assert_eq!(norm("/a/x/./../b/").unwrap(), "/a/b/");
        assert_eq!(norm("//a").unwrap(), "/a");
    }

    #[test]
    fn a_trailing_dot_segment_leaves_a_trailing_slash_as_rfc_3986_does() {
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/.").unwrap(), "/");
    }

    #[test]
    fn a_dot_dot_after_an_empty_segment_is_refused_not_guessed() {
        // RFC 3986 and Envoy give /a/b; a slash-merging server gives /b.
        assert_eq!(norm("/a//../b"), Err(RequestError::AmbiguousDotSegment));
        assert_eq!(norm("//../b"), Err(RequestError::AmbiguousDotSegment));
        assert_eq!(norm("/a//b/c/../d"), Err(RequestError::AmbiguousDotSegment));
        assert_eq!(norm("/a//%2e%2e/b"), Err(RequestError::AmbiguousDotSegment));
        assert_eq!(norm("/a//./b/.."), Err(RequestError::AmbiguousDotSegment));
        assert_eq!(RequestError::AmbiguousDotSegment.label(), "ambiguous_dot_segment");
        // Without a later `..`, duplicate slashes are merged as before.
        assert_eq!(norm("/a//b/./c").unwrap(), "/a/b/c");
    }

    #[test]
    fn encoded_dots_are_resolved_after_decoding() {
        assert_eq!(norm("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2E./admin").unwrap(), "/admin");
        assert_eq!(norm("/%61dmin").unwrap(), "/admin");
        assert_eq!(norm("/%41%7e%2D").unwrap(), "/A~-");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(norm("/public%2fadmin"), Err(RequestError::EncodedSeparator));
        assert_eq!(norm("/public%5Cadmin"), Err(RequestError::EncodedSeparator));
        assert_eq!(norm("/public\\admin"), Err(RequestError::Backslash));
        assert_eq!(norm("/a%00b"), Err(RequestError::BadEscape));
        assert_eq!(norm("/a%zz"), Err(RequestError::BadEscape));
        assert_eq!(norm("/a%2"), Err(RequestError::BadEscape));
        assert_eq!(norm("/../etc"), Err(RequestError::AboveRoot));
        assert_eq!(norm("/a/../../etc"), Err(RequestError::AboveRoot));
        assert_eq!(norm("relative"), Err(RequestError::BadPath));
        assert_eq!(norm(""), Err(RequestError::BadPath));
        assert_eq!(norm("/a b"), Err(RequestError::BadPath));
        assert_eq!(norm("/public/..;/admin"), Err(RequestError::DotSegmentParameter));
        assert_eq!(norm("/public/%2e%2e;x=1/admin"), Err(RequestError::DotSegmentParameter));
        assert_eq!(norm("/a/.;/b"), Err(RequestError::DotSegmentParameter));
    }

    #[test]
    fn matrix_parameters_are_refused_by_default() {
        // `forbid … like "/internal/*"` would not match, while Tomcat serves /internal/secrets.
        assert_eq!(norm("/internal;x/secrets"), Err(RequestError::PathParameter));
        assert_eq!(norm("/api/tenants;x/a"), Err(RequestError::PathParameter));
        assert_eq!(norm("/a;v=1/b;c"), Err(RequestError::PathParameter));
        assert_eq!(norm("/a/b;"), Err(RequestError::PathParameter));
        assert_eq!(norm("/a/;x/b"), Err(RequestError::PathParameter));
        assert_eq!(norm("/internal%3bx/secrets"), Err(RequestError::PathParameter));
        assert_eq!(norm("/internal%3Bx/secrets"), Err(RequestError::PathParameter));
        // An encoded `;` after `..` is the dot-segment case, in both modes.
        assert_eq!(norm("/a/..%3B/b"), Err(RequestError::DotSegmentParameter));
        assert_eq!(norm("/a/..%3bx/b"), Err(RequestError::DotSegmentParameter));
        assert_eq!(RequestError::PathParameter.label(), "path_parameter");
    }

    #[test]
    fn strip_mode_shows_policies_what_servlet_containers_route_on() {
        assert_eq!(strip("/internal;x/secrets").unwrap(), "/internal/secrets");
        assert_eq!(strip("/api/tenants;x/a").unwrap(), "/api/tenants/a");
        assert_eq!(strip("/a;v=1/b;c").unwrap(), "/a/b");
        assert_eq!(strip("/a%3Bjsessionid=1/b").unwrap(), "/a/b");
        assert_eq!(strip("/a/b;x=1/").unwrap(), "/a/b/");
        // Stripped dot segments are still dot segments with parameters.
        assert_eq!(strip("/public/..;/admin"), Err(RequestError::DotSegmentParameter));
        assert_eq!(strip("/a/..%3B/b"), Err(RequestError::DotSegmentParameter));
        assert_eq!(strip("/a/.;x/b"), Err(RequestError::DotSegmentParameter));
        // A segment that is only parameters is empty: a later `..` is ambiguous.
        assert_eq!(strip("/a/;x/../b"), Err(RequestError::AmbiguousDotSegment));
        assert_eq!(strip("/a/;x/b").unwrap(), "/a/b");
    }

    #[test]
    fn a_fragment_is_refused() {
        assert_eq!(norm("/public#x"), Err(RequestError::PathFragment));
        assert_eq!(norm("/a/#/../admin"), Err(RequestError::PathFragment));
        // Encoded, `#` is data and stays encoded.
        assert_eq!(norm("/a%23b").unwrap(), "/a%23b");
    }

    #[test]
    fn reserved_escapes_stay_encoded_and_canonical() {
        assert_eq!(norm("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(norm("/a%2cb%c3%a9").unwrap(), "/a%2Cb%C3%A9");
        assert_eq!(norm("/caf\u{e9}").unwrap(), "/caf\u{e9}");
    }

    #[test]
    fn host_loses_port_and_case() {
        assert_eq!(normalize_host("API.Example.com:8443").unwrap(), "api.example.com");
        assert_eq!(normalize_host("[::1]:80").unwrap(), "::1");
        assert_eq!(normalize_host("[::1]").unwrap(), "::1");
        assert_eq!(normalize_host("[0:0:0:0:0:0:0:1]").unwrap(), "::1");
        assert_eq!(normalize_host("[2001:DB8::1]:443").unwrap(), "2001:db8::1");
        assert_eq!(normalize_host("10.0.0.1:8080").unwrap(), "10.0.0.1");
        assert_eq!(normalize_host("my_svc.ns").unwrap(), "my_svc.ns");
        assert_eq!(normalize_host("123.example.com").unwrap(), "123.example.com");
        assert_eq!(normalize_host("").unwrap(), "");
    }

    #[test]
    fn a_trailing_dot_is_removed_so_a_host_forbid_still_matches() {
        assert_eq!(normalize_host("admin.example.com.").unwrap(), "admin.example.com");
        assert_eq!(normalize_host("Admin.Example.com.:443").unwrap(), "admin.example.com");
        assert_eq!(normalize_host("1.2.3.4.").unwrap(), "1.2.3.4");
        assert_eq!(normalize_host("admin.example.com.."), Err(RequestError::BadHost));
        assert_eq!(normalize_host("."), Err(RequestError::BadHost));
    }

    #[test]
    fn brackets_hold_only_an_ipv6_address_and_only_a_port_follows() {
        assert_eq!(normalize_host("[admin.example.com]"), Err(RequestError::BadHost));
        assert_eq!(normalize_host("[::1]junk"), Err(RequestError::BadHost));
        assert_eq!(normalize_host("[::1]:"), Err(RequestError::BadHost));
        assert_eq!(normalize_host("[::1]:80x"), Err(RequestError::BadHost));
        assert_eq!(normalize_host("[::1"), Err(RequestError::BadHost));
        assert_eq!(normalize_host("[1.2.3.4]"), Err(RequestError::BadHost));
        assert_eq!(normalize_host("[fe80::1%25eth0]"), Err(RequestError::BadHost));
        assert_eq!(normalize_host("::1"), Err(RequestError::BadHost));
    }

    #[test]
    fn numbers_that_whatwg_reads_as_ipv4_must_be_a_canonical_dotted_quad() {
        for h in [
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "0177.0.0.1",
            "127.0.0.01",
            "256.0.0.1",
            "1.2.3.4.5",
            "0x7f000001",
            "foo.123",
            "foo.0x1f",
            "a.0x",
        ] {
            assert_eq!(normalize_host(h), Err(RequestError::BadHost), "{h}");
        }
        assert_eq!(normalize_host("0xcafe.example").unwrap(), "0xcafe.example");
        assert_eq!(normalize_host("127.0.0.1").unwrap(), "127.0.0.1");
    }

    #[test]
    fn hosts_outside_the_grammar_are_refused() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}a", "abcdefghi.".repeat(26));
        for h in [
            "evil.com/x",
            "a:b",
            "a:b:80",
            "a.com:",
            "a.com:0",
            "a.com:65536",
            "a.com:+80",
            "a.com:123456",
            "user@a.com",
            "a..com",
            ".a.com",
            "a b.com",
            "caf\u{e9}.com",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert_eq!(normalize_host(h), Err(RequestError::BadHost), "{h}");
        }
        assert_eq!(normalize_host("a.com:65535").unwrap(), "a.com");
    }

    fn request(method: &str, path: &str, host: &str, raw: &[(&str, &str)]) -> CheckRequest {
        let header_map = (!raw.is_empty()).then(|| HeaderMap {
            headers: raw
                .iter()
                .map(|(k, v)| HeaderValue { key: (*k).into(), value: (*v).into(), ..Default::default() })
                .collect(),
        });
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: method.into(),
                        path: path.into(),
                        host: host.into(),
                        header_map,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn view_err(req: &CheckRequest) -> RequestError {
        RequestView::from_check(req, &Limits::default()).expect_err("refused").kind
    }

    #[test]
    fn a_refusal_carries_the_request_id_from_id_or_x_request_id() {
        let mut req = request("GET", "/a/%2F", "h", &[("x-request-id", "from-header")]);
        let e = RequestView::from_check(&req, &Limits::default()).expect_err("refused");
        assert_eq!((e.kind, e.request_id.as_str()), (RequestError::EncodedSeparator, "from-header"));
        if let Some(http) = req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
            http.id = "envoy-id".into();
        }
        let e = RequestView::from_check(&req, &Limits::default()).expect_err("refused");
        assert_eq!((e.label(), e.request_id.as_str()), ("encoded_separator", "envoy-id"));
        // Nothing to read: an empty id, never a guess.
        let e = RequestView::from_check(&CheckRequest::default(), &Limits::default()).expect_err("refused");
        assert_eq!((e.kind, e.request_id.as_str()), (RequestError::MissingHttp, ""));
    }

    #[test]
    fn agreeing_copies_of_method_path_and_host_are_accepted() {
        let req = request(
            "GET",
            "/a/b?x=1",
            "api.example.com",
            &[(":method", "GET"), (":path", "/a/b?x=1"), (":authority", "API.example.com:443")],
        );
        let v = RequestView::from_check(&req, &Limits::default()).expect("valid");
        assert_eq!(
            (v.method.as_str(), v.path.as_str(), v.query, v.host.as_str()),
            ("GET", "/a/b", "x=1", "api.example.com")
        );
        // Proxyless clients send only the header map.
        let req = request("", "", "", &[(":method", "GET"), (":path", "/p"), (":authority", "h.example")]);
        let v = RequestView::from_check(&req, &Limits::default()).expect("valid");
        assert_eq!((v.path.as_str(), v.host.as_str()), ("/p", "h.example"));
    }

    #[test]
    fn disagreeing_copies_of_method_path_or_host_are_refused() {
        let r = request("GET", "/public/x", "a.example", &[(":method", "DELETE")]);
        assert_eq!(view_err(&r), RequestError::ConflictingMethod);
        let r = request("GET", "/public/x", "a.example", &[(":path", "/admin")]);
        assert_eq!(view_err(&r), RequestError::ConflictingPath);
        let r = request("GET", "/p", "public.example.com", &[(":authority", "admin.example.com")]);
        assert_eq!(view_err(&r), RequestError::ConflictingHost);
        let r = request("GET", "/p", "public.example.com", &[("host", "admin.example.com")]);
        assert_eq!(view_err(&r), RequestError::ConflictingHost);
        let r = request("GET", "/p", "", &[(":authority", "a.example"), ("Host", "b.example")]);
        assert_eq!(view_err(&r), RequestError::ConflictingHost);
        // A bad copy is a bad host, even when the attribute is fine.
        let r = request("GET", "/p", "a.example", &[("host", "[a.example]")]);
        assert_eq!(view_err(&r), RequestError::BadHost);
    }

    #[test]
    fn a_pseudo_header_or_host_sent_twice_is_refused() {
        for dup in [":path", ":method", ":authority", "host", ":scheme"] {
            let v = if dup == ":method" {
                "GET"
            } else if dup == ":path" {
                "/p"
            } else {
                "a.example"
            };
            let r = request("GET", "/p", "a.example", &[(dup, v), (dup, v)]);
            assert_eq!(view_err(&r), RequestError::DuplicatePseudoHeader, "{dup}");
        }
        let r = request("GET", "/p", "a.example", &[("Host", "a.example"), ("host", "a.example")]);
        assert_eq!(view_err(&r), RequestError::DuplicatePseudoHeader);
    }

    #[test]
    fn the_view_refuses_attack_paths_and_hosts() {
        assert_eq!(view_err(&request("GET", "/internal;x/secrets", "a.example", &[])), RequestError::PathParameter);
        assert_eq!(view_err(&request("GET", "/a//../b", "a.example", &[])), RequestError::AmbiguousDotSegment);
        assert_eq!(view_err(&request("GET", "/public#/../admin", "a.example", &[])), RequestError::PathFragment);
        assert_eq!(view_err(&request("GET", "/p?q#f", "a.example", &[])), RequestError::PathFragment);
        assert_eq!(view_err(&request("GET", "/p", "[::1]junk", &[])), RequestError::BadHost);
        assert_eq!(view_err(&request("GET", "/p", "[admin.example.com]", &[])), RequestError::BadHost);
        let ok = request("GET", "/p", "admin.example.com.", &[]);
        assert_eq!(RequestView::from_check(&ok, &Limits::default()).expect("valid").host, "admin.example.com");
        let strip = request("GET", "/internal;x/secrets", "a.example", &[]);
        let v = RequestView::from_check_with(&strip, &Limits::default(), MatrixParameters::Strip).expect("valid");
        assert_eq!(v.path, "/internal/secrets");
    }
}
