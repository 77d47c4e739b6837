//! Normalizes an Envoy `CheckRequest` once into a [`RequestView`]: the only place that reads the
//! request side of the wire types. Everything downstream sees canonical, bounded values.
use std::net::IpAddr;

use crate::config::Limits;
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
    #[error("too many headers")]
    TooManyHeaders,
    #[error("host is not valid")]
    BadHost,
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
            RequestError::TooManyHeaders => "too_many_headers",
            RequestError::BadHost => "bad_host",
        }
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
    /// Normalizes a check request under the configured limits.
    pub fn from_check(req: &'a CheckRequest, limits: &Limits) -> Result<Self, RequestError> {
        let attrs: &'a AttributeContext = req.attributes.as_ref().ok_or(RequestError::MissingHttp)?;
        let http = attrs.request.as_ref().and_then(|r| r.http.as_ref()).ok_or(RequestError::MissingHttp)?;
        let (headers, invalid_values) = collect_headers(http, limits.max_headers)?;
        let lookup = |name: &str| {
            headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v).filter(|v| !v.is_empty())
        };

        let method_raw = non_empty(&http.method).or_else(|| lookup(":method")).ok_or(RequestError::MissingMethod)?;
        if !method_raw.bytes().all(|b| b.is_ascii_alphabetic()) || method_raw.len() > 16 {
            return Err(RequestError::BadMethod);
        }
        let method = method_raw.to_ascii_uppercase();

        let raw_path = non_empty(&http.path).or_else(|| lookup(":path")).ok_or(RequestError::BadPath)?;
        if raw_path.len() > limits.max_path_bytes {
            return Err(RequestError::PathTooLong);
        }
        let without_fragment = raw_path.split_once('#').map_or(raw_path, |(p, _)| p);
        let (raw_only_path, query) = match without_fragment.split_once('?') {
            Some((p, q)) => (p, q),
            None => (without_fragment, non_empty(&http.query).unwrap_or("")),
        };
        let path = normalize_path(raw_only_path)?;

        let host_raw = non_empty(&http.host).or_else(|| lookup(":authority")).or_else(|| lookup("host")).unwrap_or("");
        let host = normalize_host(host_raw)?;

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
/// [`RequestView::request_id`] (Envoy's `id`, else `x-request-id`), so even a refusal can be
/// matched to Envoy's access log.
pub fn raw_request_id(req: &CheckRequest) -> &str {
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

/// Lower-cases the host and strips a port; refuses anything that is not a plain host name or IP.
pub fn normalize_host(raw: &str) -> Result<String, RequestError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        let end = rest.find(']').ok_or(RequestError::BadHost)?;
        &rest[..end]
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return Err(RequestError::BadHost),
            None => raw,
        }
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    if !ok {
        return Err(RequestError::BadHost);
    }
    Ok(host.to_ascii_lowercase())
}

/// Canonicalizes a path: decodes percent-escapes of unreserved characters, upper-cases the
/// rest, collapses duplicate slashes and resolves dot segments (after decoding, so `%2e%2e` is
/// `..`). Encoded `/` or `\`, raw `\`, NUL/control escapes, climbing above `/` and dot segments
/// carrying `;` parameters (`..;/`, which Tomcat-style servers read as `..`) are refused.
pub fn normalize_path(raw: &str) -> Result<String, RequestError> {
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
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => decoded.push(v as char),
                    _ => {
                        decoded.push('%');
                        decoded.push(char::from_digit(hi, 16).unwrap_or('0').to_ascii_uppercase());
                        decoded.push(char::from_digit(lo, 16).unwrap_or('0').to_ascii_uppercase());
                    }
                }
                i += 3;
            }
            b'\\' => return Err(RequestError::Backslash),
            0..=0x20 | 0x7f => return Err(RequestError::BadPath),
            _ => {
                // Multi-byte UTF-8 passes through unchanged; the input is a valid &str.
                let ch_len = utf8_len(b);
                decoded.push_str(&raw[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    let trailing_slash = decoded.len() > 1 && decoded.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        if let Some((base, _params)) = seg.split_once(';')
            && matches!(base, "." | "..")
        {
            return Err(RequestError::DotSegmentParameter);
        }
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(RequestError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push('/');
    }
    Ok(out)
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

    #[test]
    fn dot_segments_and_duplicate_slashes_collapse() {
        assert_eq!(normalize_path("/a//b/./c/../d").unwrap(), "/a/b/d");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("//").unwrap(), "/");
        assert_eq!(normalize_path("/a/b/").unwrap(), "/a/b/");
    }

    #[test]
    fn encoded_dots_are_resolved_after_decoding() {
        assert_eq!(normalize_path("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(normalize_path("/public/%2E./admin").unwrap(), "/admin");
        assert_eq!(normalize_path("/%61dmin").unwrap(), "/admin");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(normalize_path("/public%2fadmin"), Err(RequestError::EncodedSeparator));
        assert_eq!(normalize_path("/public%5Cadmin"), Err(RequestError::EncodedSeparator));
        assert_eq!(normalize_path("/public\\admin"), Err(RequestError::Backslash));
        assert_eq!(normalize_path("/a%00b"), Err(RequestError::BadEscape));
        assert_eq!(normalize_path("/a%zz"), Err(RequestError::BadEscape));
        assert_eq!(normalize_path("/a%2"), Err(RequestError::BadEscape));
        assert_eq!(normalize_path("/../etc"), Err(RequestError::AboveRoot));
        assert_eq!(normalize_path("relative"), Err(RequestError::BadPath));
        assert_eq!(normalize_path("/public/..;/admin"), Err(RequestError::DotSegmentParameter));
        assert_eq!(normalize_path("/public/%2e%2e;x=1/admin"), Err(RequestError::DotSegmentParameter));
        assert_eq!(normalize_path("/a/.;/b"), Err(RequestError::DotSegmentParameter));
        assert_eq!(normalize_path("/a;v=1/b;c").unwrap(), "/a;v=1/b;c");
    }

    #[test]
    fn reserved_escapes_stay_encoded_and_canonical() {
        assert_eq!(normalize_path("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(normalize_path("/caf\u{e9}").unwrap(), "/caf\u{e9}");
    }

    #[test]
    fn host_loses_port_and_case() {
        assert_eq!(normalize_host("API.Example.com:8443").unwrap(), "api.example.com");
        assert_eq!(normalize_host("[::1]:80").unwrap(), "::1");
        assert!(normalize_host("evil.com/x").is_err());
        assert!(normalize_host("a:b").is_err());
    }
}
