//! Reading a bearer token from the request: configured headers (with their scheme) and cookies.
//! A credential that is present but unreadable is refused, never taken for "no credential".
use super::{JwtAuthenticator, JwtError};
use crate::authn::{AuthnError, Credential};
use crate::config::TokenSource;
use crate::request::RequestView;

/// What a configured token header holds.
#[derive(Debug, PartialEq, Eq)]
enum HeaderToken<'a> {
    Token(&'a str),
    /// Another authorization scheme: not a credential of this source.
    NotOurs,
    /// Our scheme (or a prefix-less token header) that does not parse: refused, never anonymous.
    Malformed,
}

/// RFC 9110 `tchar`: what an auth-scheme name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The bytes of a `token68` body, as a table: the grammar's statement, which `token68_body`
/// (run over every byte of every token on every check, cache hits included) must match.
#[cfg(test)]
const TOKEN68_BODY: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    t
};

/// RFC 9110 `token68`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    // Judged 32 bytes at a time without an early exit, by range comparisons rather than the
    // table (which stays the grammar's statement, and the tests' oracle): the compiler turns
    // this into vector compares, ~2.5x faster on an 800-byte token.
    let mut chunks = body.as_bytes().chunks_exact(32);
    let whole = chunks.by_ref().all(|c| c.iter().fold(true, |ok, &b| ok & token68_body(b)));
    !body.is_empty() && whole && chunks.remainder().iter().all(|&b| token68_body(b))
}

/// A `token68` body byte (`TOKEN68_BODY`), branch-free.
#[inline(always)]
fn token68_body(b: u8) -> bool {
    let lower = b | 0x20;
    (lower.wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'0') < 10)
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

/// Reads one header value under a source's scheme prefix. With a prefix, the value is ours when
/// its first word is the scheme in any case (after any leading whitespace), and then it must be
/// exactly `<scheme> SP token68`: a tab, two spaces, a bare scheme, a second word or trailing
/// whitespace is malformed, because upstreams disagree on how to read it. Without a prefix the
/// whole value is the token and must be non-empty with no surrounding whitespace.
fn parse_header_token<'a>(v: &'a str, prefix: Option<&str>) -> HeaderToken<'a> {
    if v.trim_matches([' ', '\t']).is_empty() {
        return HeaderToken::Malformed;
    }
    let scheme = prefix.map(|p| p.trim_matches([' ', '\t'])).unwrap_or("");
    if scheme.is_empty() {
        return if v.trim_matches([' ', '\t']) == v { HeaderToken::Token(v) } else { HeaderToken::Malformed };
    }
    let lead = v.trim_start_matches([' ', '\t']);
    let ours = lead.get(..scheme.len()).is_some_and(|h| h.eq_ignore_ascii_case(scheme))
        && lead.as_bytes().get(scheme.len()).is_none_or(|b| !is_tchar(*b));
    if !ours {
        return HeaderToken::NotOurs;
    }
    if lead.len() != v.len() {
        return HeaderToken::Malformed;
    }
    match v.get(scheme.len()..).and_then(|rest| rest.strip_prefix(' ')) {
        Some(t) if is_token68(t) => HeaderToken::Token(t),
        _ => HeaderToken::Malformed,
    }
}

impl JwtAuthenticator {
    /// The token and the index of the source it came from. Every configured source is read,
    /// and any that is present but does not parse (bad scheme spacing, empty, not UTF-8) fails
    /// the request: a credential we cannot read is never taken for "no credential". The first
    /// source that holds a token supplies it.
    pub(super) fn extract<'a>(&self, req: &RequestView<'a>) -> Result<Option<(&'a str, usize)>, AuthnError> {
        let malformed = || AuthnError::MalformedCredential(Credential::BearerToken);
        let mut found: Option<(&'a str, usize)> = None;
        for (idx, src) in self.sources.iter().enumerate() {
            let token = match src {
                TokenSource::Header { header, prefix } => {
                    match req.header_count(header) {
                        0 => continue,
                        1 => {}
                        _ => return Err(JwtError::Duplicate.into()),
                    }
                    if req.has_invalid_value(header) {
                        return Err(malformed());
                    }
                    let v = req.header(header).unwrap_or("");
                    match parse_header_token(v, prefix.as_deref()) {
                        HeaderToken::Token(t) => t,
                        // Another scheme (e.g. Basic) is not our credential.
                        HeaderToken::NotOurs => continue,
                        // Size is judged first, as for a well-formed token.
                        HeaderToken::Malformed if v.len() > self.max_token_bytes => {
                            return Err(JwtError::TooLarge.into());
                        }
                        HeaderToken::Malformed => return Err(malformed()),
                    }
                }
                TokenSource::Cookie { cookie } => {
                    if req.has_invalid_value("cookie") {
                        return Err(malformed());
                    }
                    let mut value = None;
                    for (k, v) in req.headers() {
                        if !k.eq_ignore_ascii_case("cookie") {
                            continue;
                        }
                        for pair in v.split(';') {
                            if let Some((name, val)) = pair.split_once('=')
                                && name.trim() == cookie
                            {
                                if value.is_some() {
                                    return Err(JwtError::Duplicate.into());
                                }
                                value = Some(val.trim());
                            }
                        }
                    }
                    match value {
                        None => continue,
                        Some("") => return Err(malformed()),
                        Some(t) => t,
                    }
                }
            };
            if found.is_none() {
                found = Some((token, idx));
            }
        }
        Ok(found)
    }

    /// Names of the request's authorization-style headers (`authorization`, and every token
    /// header configured with a scheme prefix) that carry a scheme no source here reads, e.g.
    /// `Basic`. They are not our credentials: forwarded unless configured to be stripped.
    pub fn foreign_credential_headers(&self, req: &RequestView<'_>) -> Vec<String> {
        let mut names: Vec<&str> = vec!["authorization"];
        for s in &self.sources {
            if let TokenSource::Header { header, prefix: Some(_) } = s
                && !names.iter().any(|n| n.eq_ignore_ascii_case(header))
            {
                names.push(header);
            }
        }
        let mut out = Vec::new();
        for name in names {
            let claimed = |v: &str| {
                self.sources.iter().any(|s| match s {
                    TokenSource::Header { header, prefix } if header.eq_ignore_ascii_case(name) => {
                        !matches!(parse_header_token(v, prefix.as_deref()), HeaderToken::NotOurs)
                    }
                    _ => false,
                })
            };
            // A value that is not UTF-8 reads as "": claimed (and refused) where a source reads it.
            if req.headers().iter().any(|(k, v)| k.eq_ignore_ascii_case(name) && !claimed(v)) {
                out.push(name.to_ascii_lowercase());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table says exactly what the grammar says, for every byte value, alone and in a token.
    #[test]
    fn token68_table_matches_the_grammar_for_every_byte() {
        for b in 0..=255u8 {
            let grammar = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(TOKEN68_BODY[usize::from(b)], grammar, "byte {b:#04x}");
            let mut t = b"abc".to_vec();
            t.push(b);
            t.extend_from_slice(b"def");
            if let Ok(s) = std::str::from_utf8(&t) {
                assert_eq!(is_token68(s), grammar, "{s:?}");
            }
        }
        // The branch-free reading agrees with the table, and a bad byte is found at every
        // position: in a whole 32-byte chunk, at a chunk's edge and in the remainder.
        for b in 0..=255u8 {
            assert_eq!(token68_body(b), TOKEN68_BODY[usize::from(b)], "byte {b:#04x}");
        }
        let good = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/".repeat(2);
        assert!(is_token68(&good));
        for at in 0..good.len() {
            for bad in ['=', ' ', '!', '@', '[', '`', '{', '\x7f', 'é'] {
                let mut t = good.clone();
                t.replace_range(at..=at, &bad.to_string());
                // A trailing run of '=' is padding, allowed.
                let want = bad == '=' && at == good.len() - 1;
                assert_eq!(is_token68(&t), want, "{bad:?} at {at}");
            }
        }
        for (s, ok) in [("a=", true), ("a==", true), ("=", false), ("==a", false), ("a=b", false), ("", false)] {
            assert_eq!(is_token68(s), ok, "{s:?}");
        }
        // Non-ASCII (every byte of a multi-byte character is >= 0x80) is never token68.
        assert!(!is_token68("abcé"));
        assert!(!is_token68("a\u{00a0}b"));
    }

    #[test]
    fn header_tokens_parse_only_as_scheme_space_token68() {
        use HeaderToken::*;
        let b = Some("Bearer ");
        assert_eq!(parse_header_token("Bearer abc.def-_~+/==", b), Token("abc.def-_~+/=="));
        assert_eq!(parse_header_token("bEARER abc", b), Token("abc"));
        for v in ["Bearer\tabc", "Bearer", "bearer  abc", "Bearer abc def", "Bearer abc ", " Bearer abc", "Bearer ="] {
            assert_eq!(parse_header_token(v, b), Malformed, "{v:?}");
        }
        for v in ["", " ", "\t"] {
            assert_eq!(parse_header_token(v, b), Malformed, "{v:?}");
            assert_eq!(parse_header_token(v, None), Malformed, "{v:?}");
        }
        for v in ["Basic abc", "Digest a=b", "Bearerx abc", "Bearer-x abc", "DPoP abc"] {
            assert_eq!(parse_header_token(v, b), NotOurs, "{v:?}");
        }
        // A scheme configured without its trailing space reads the same.
        assert_eq!(parse_header_token("DPoP abc", Some("DPoP")), Token("abc"));
        assert_eq!(parse_header_token("abc", None), Token("abc"));
        assert_eq!(parse_header_token("abc ", None), Malformed);
    }
}
