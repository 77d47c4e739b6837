//! Canonical forms of the two inputs policies match on most: the path and the host. Pure
//! functions of their input; ambiguity is a [`RequestError`] (400), never a guess.
use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::RequestError;
use crate::config::MatrixParameters;

/// Canonicalizes a host (`:authority`): a DNS name, a dotted-quad IPv4 address or a bracketed
/// IPv6 literal, with an optional port that is dropped. Lower-cased; one trailing dot removed.
/// Anything else is refused: a name that WHATWG would read as an IPv4 number (`127.1`,
/// `0x7f.0.0.1`, `2130706433`) is refused rather than decided on as a name. IPv6 comes back
/// without brackets, in RFC 5952 form (`[0:0::1]` is `::1`).
pub fn normalize_host(raw: &str) -> Result<String, RequestError> {
    host_of(raw).map(Cow::into_owned)
}

/// [`normalize_host`], borrowing from `raw` when the canonical host is a slice of it (already
/// lower-case: the common case costs no allocation).
pub(super) fn host_of(raw: &str) -> Result<Cow<'_, str>, RequestError> {
    if raw.is_empty() {
        return Ok(Cow::Borrowed(""));
    }
    if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(RequestError::BadHost)?;
        if !after.is_empty() {
            check_port(after.strip_prefix(':').ok_or(RequestError::BadHost)?)?;
        }
        let ip: Ipv6Addr = inner.parse().map_err(|_| RequestError::BadHost)?;
        return Ok(Cow::Owned(ip.to_string()));
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
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    // Every dot-separated label (empty ones included) is 1–63 of `[a-z0-9_-]`: one pass over
    // the bytes, not a split per label.
    let mut label_start = 0;
    for (i, &b) in host.as_bytes().iter().enumerate() {
        if b == b'.' {
            if !(1..=63).contains(&(i - label_start)) {
                return Err(RequestError::BadHost);
            }
            label_start = i + 1;
        } else if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return Err(RequestError::BadHost);
        }
    }
    let last = host.get(label_start..).ok_or(RequestError::BadHost)?;
    if !(1..=63).contains(&last.len()) {
        return Err(RequestError::BadHost);
    }
    // WHATWG parses a host whose last label is a number as IPv4 (decimal, octal or hex parts,
    // fewer than four parts): accept only the one canonical spelling of an address.
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last.strip_prefix("0x").is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        let ip: Ipv4Addr = host.parse().map_err(|_| RequestError::BadHost)?;
        if ip.to_string() != *host {
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
    path_of(raw, matrix).map(Cow::into_owned)
}

/// [`normalize_path`], borrowing `raw` when it is canonical already (see [`is_canonical_path`]).
pub(super) fn path_of(raw: &str, matrix: MatrixParameters) -> Result<Cow<'_, str>, RequestError> {
    if is_canonical_path(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    rewrite_path(raw, matrix).map(Cow::Owned)
}

/// A path [`rewrite_path`] would return unchanged, in every matrix mode: absolute, printable
/// ASCII without an escape, `;`, `\`, `#` or `?`, no `.`/`..` segment and no empty segment but
/// a trailing one. Conservative: a `false` only means the full rewrite runs.
///
/// One pass over the bytes (every check runs this): a segment is judged at the `/` that ends it.
pub(super) fn is_canonical_path(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else { return false };
    let bad_segment = |seg: &[u8]| matches!(seg, b"" | b"." | b"..");
    let mut start = 0;
    for (i, &b) in rest.as_bytes().iter().enumerate() {
        if b == b'/' {
            if bad_segment(&rest.as_bytes()[start..i]) {
                return false;
            }
            start = i + 1;
        } else if !b.is_ascii_graphic() || matches!(b, b'%' | b';' | b'\\' | b'#' | b'?') {
            return false;
        }
    }
    // The last segment may be empty (a trailing slash), never a dot segment.
    !matches!(&rest.as_bytes()[start..], b"." | b"..")
}

/// The full canonicalization behind [`normalize_path`].
fn rewrite_path(raw: &str, matrix: MatrixParameters) -> Result<String, RequestError> {
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

    /// Every string up to `len` over an alphabet with the characters that matter to paths.
    fn all_paths(len: usize) -> Vec<String> {
        const ALPHABET: [char; 9] = ['/', 'a', '.', '%', '2', 'e', ';', 'Z', '\\'];
        let mut out = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..len {
            frontier = frontier.iter().flat_map(|p| ALPHABET.iter().map(move |c| format!("{p}{c}"))).collect();
            out.extend(frontier.iter().cloned());
        }
        out
    }

    #[test]
    fn a_borrowed_path_is_exactly_what_the_rewrite_returns() {
        let mut borrowed = 0;
        for raw in all_paths(5) {
            for matrix in [MatrixParameters::Refuse, MatrixParameters::Strip] {
                let fast = path_of(&raw, matrix);
                assert_eq!(fast.clone().map(Cow::into_owned), rewrite_path(&raw, matrix), "{raw:?} {matrix:?}");
                if let Ok(Cow::Borrowed(_)) = fast {
                    borrowed += 1;
                }
            }
        }
        // The fast path is taken, not just equivalent because it never runs.
        assert!(borrowed > 1000, "{borrowed}");
        for raw in ["/", "/a/", "/api/orders/12345", "/a.b/c~d/-_"] {
            assert!(matches!(path_of(raw, MatrixParameters::Refuse), Ok(Cow::Borrowed(_))), "{raw}");
        }
        for raw in ["//a", "/a//b", "/a/./b", "/a/..", "/%41", "/a;b", "/é"] {
            assert!(!matches!(path_of(raw, MatrixParameters::Strip), Ok(Cow::Borrowed(_))), "{raw}");
        }
    }

    #[test]
    fn a_lower_case_host_is_borrowed_and_others_are_rewritten() {
        assert!(matches!(host_of("shop.example"), Ok(Cow::Borrowed("shop.example"))));
        assert!(matches!(host_of("shop.example:8080"), Ok(Cow::Borrowed("shop.example"))));
        assert_eq!(host_of("Shop.Example.").unwrap(), "shop.example");
        assert_eq!(host_of("[0:0::1]:80").unwrap(), "::1");
        assert_eq!(host_of("127.1"), Err(RequestError::BadHost));
    }
}
