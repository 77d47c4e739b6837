//! One parse of a compact JWS (RFC 7515 §7.1): the token is split once, its header and payload
//! are base64url-decoded once and each parsed once into a JSON object; the signature is checked
//! over the `header.payload` bytes as sent, and the claims are validated from that same parse.
//!
//! The signature is checked with the key's verifier built when the key was loaded (see
//! `jwks::Verifiers`), not by rebuilding the public key per call as
//! `jsonwebtoken::crypto::verify` did; its signature decoding (strict unpadded base64url) and
//! its error order are kept.
//!
//! The refusals are exactly those `jsonwebtoken::decode` made when it parsed the token again
//! (twice) itself, including the ones that came from its serde types rather than from any rule:
//! a duplicate member its typed `Header` or claims struct names, a header member of the wrong
//! type, a `sub` that is an array or object, a non-empty array or object as `exp` or `nbf`.
//! The tests below compare both on hostile tokens.
use jsonwebtoken::{Algorithm, Validation};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::JwtError;
use super::members::{Members, NameSeed};
use super::verify::check_header;
use crate::authn::jwks::Verifiers;

/// Members of jsonwebtoken's typed `Header`: a duplicate of one of these was refused.
pub(super) const HEADER_FIELDS: &[&str] =
    &["typ", "alg", "cty", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "crit", "enc", "zip", "url", "nonce"];
/// A decoded signature up to this size (RSA-8192's 1024 bytes, with the decoder's rounding) is
/// decoded on the stack; a longer one, never valid, still decodes exactly as before, on the heap.
const SIG_STACK: usize = 1026;
/// A header or payload segment decoding to up to this many bytes is decoded on the stack (a
/// typical access token's payload is well under it); a longer one decodes exactly the same way,
/// on the heap.
const SEGMENT_STACK: usize = 2048;
/// Members a header and a payload are sized for up front (a typical header has 2–4, an access
/// token's payload 10–16): no regrowing of the list while it is read. More still fit.
const HEADER_CAPACITY: usize = 4;
const CLAIMS_CAPACITY: usize = 16;
/// Claims jsonwebtoken's validation struct names: a duplicate of one of these was refused.
pub(super) const VALIDATED_CLAIMS: &[&str] = &["exp", "nbf", "sub", "iss", "aud"];

/// A compact JWS, split and parsed, nothing about it trusted yet.
pub(super) struct ParsedToken<'a> {
    pub(super) header: Members,
    /// The header's `alg`, as the RFC 8725 header checks read it.
    pub(super) alg: Algorithm,
    pub(super) claims: Members,
    /// `<header>.<payload>` as sent: what the signature covers.
    signing_input: &'a str,
    signature: &'a str,
    /// A member of the header is one jsonwebtoken's `Header` could not hold (judged after the
    /// key lookup, where `jsonwebtoken::decode` parsed the header).
    header_refused: bool,
    /// A duplicate of a validated claim (judged after the signature, as jsonwebtoken did).
    duplicate_claim: bool,
}

impl<'a> ParsedToken<'a> {
    /// Splits and parses, with the same refusals in the same order as before: five segments are
    /// JWE, anything but three is malformed, as is a segment that is not canonical unpadded
    /// base64url or not exactly one JSON object; the header is checked before the payload is
    /// read.
    pub(super) fn parse(token: &'a str) -> Result<Self, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed);
        };
        match parts.count() {
            0 => {}
            2 => return Err(JwtError::Encrypted),
            _ => return Err(JwtError::Malformed),
        }
        let (header, header_dup) = decode_object(h, HEADER_FIELDS, HEADER_CAPACITY)?;
        let alg = check_header(&header)?;
        let (claims, duplicate_claim) = decode_object(p, VALIDATED_CLAIMS, CLAIMS_CAPACITY)?;
        let header_refused = header_dup || !header_types_ok(&header);
        // `h.len() + 1 + p.len()` is within `token`: the first two segments and their dot.
        let signing_input = token.get(..h.len() + 1 + p.len()).ok_or(JwtError::Malformed)?;
        Ok(Self { header, alg, claims, signing_input, signature: s, header_refused, duplicate_claim })
    }

    /// What `jsonwebtoken::decode` did once the key was chosen: the typed header, the
    /// signature over the signing input, then the claims under `v`, in that order.
    pub(super) fn verify(&self, key: &Verifiers, v: &Validation, now: u64) -> Result<(), JwtError> {
        if self.header_refused {
            return Err(JwtError::Malformed);
        }
        // jsonwebtoken refused a key of another family (`InvalidKeyFormat`) before it decoded
        // the signature.
        if !key.supports(self.alg) {
            return Err(JwtError::KeyMismatch);
        }
        let (mut stack, mut heap) = ([0u8; SIG_STACK], Vec::new());
        let sig = base64url(self.signature, &mut stack, &mut heap)?;
        if !key.verify(self.alg, self.signing_input.as_bytes(), sig) {
            return Err(JwtError::BadSignature);
        }
        if self.duplicate_claim {
            return Err(JwtError::Malformed);
        }
        validate(&self.claims, v, now)
    }
}

/// Base64url (unpadded, canonical: the engine refuses padding and stray trailing bits) and
/// then one JSON object; also whether a member named in `watched` appeared twice (the later
/// value is kept, as serde_json's `Map` kept it).
fn decode_object(seg: &str, watched: &'static [&'static str], capacity: usize) -> Result<(Members, bool), JwtError> {
    let (mut stack, mut heap) = ([0u8; SEGMENT_STACK], Vec::new());
    read_object(base64url(seg, &mut stack, &mut heap)?, watched, capacity)
}

/// Unpadded base64url, canonical (no padding, no stray trailing bits: exactly what `base64`'s
/// `URL_SAFE_NO_PAD` accepts), decoded with SIMD into `stack` when it fits, else into `heap`.
fn base64url<'a>(seg: &str, stack: &'a mut [u8], heap: &'a mut Vec<u8>) -> Result<&'a [u8], JwtError> {
    let codec = base64_simd::URL_SAFE_NO_PAD;
    // Checked first: `decode` panics on a short output, and the length says where it goes.
    let n = codec.decoded_length(seg.as_bytes()).map_err(|_| JwtError::Malformed)?;
    match stack.get_mut(..n) {
        Some(out) => codec.decode(seg.as_bytes(), base64_simd::Out::from_slice(out)).map(|b| &*b),
        None => codec.decode_to_vec(seg).map(|v| {
            *heap = v;
            &heap[..]
        }),
    }
    .map_err(|_| JwtError::Malformed)
}

/// Exactly one JSON object (whitespace around it allowed, as with `serde_json::from_slice`).
pub(super) fn read_object(
    bytes: &[u8],
    watched: &'static [&'static str],
    capacity: usize,
) -> Result<(Members, bool), JwtError> {
    // Checked as UTF-8 once, not string by string: JSON that `from_slice` accepts is UTF-8
    // throughout (outside strings it is ASCII), so this refuses only what it refused.
    let text = std::str::from_utf8(bytes).map_err(|_| JwtError::Malformed)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let out = ObjectSeed { watched, capacity }.deserialize(&mut de).map_err(|_| JwtError::Malformed)?;
    de.end().map_err(|_| JwtError::Malformed)?;
    Ok(out)
}

struct ObjectSeed {
    watched: &'static [&'static str],
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = (Members, bool);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed {
    type Value = (Members, bool);
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut sent = Vec::with_capacity(self.capacity);
        while let Some(k) = a.next_key_seed(NameSeed)? {
            let v: Value = a.next_value()?;
            sent.push((k, v));
        }
        Ok(Members::from_sent(sent, self.watched))
    }
}

/// Whether jsonwebtoken's `Header` could hold these members: string-typed ones are strings or
/// null, `x5c` and `crit` arrays of strings or null. (`alg` was already read by name; `jwk`,
/// `jku`, `x5u`, `x5c`, `crit` and `enc` are refused by the header checks before this matters.)
/// One pass over the (few) members, each name matched once.
fn header_types_ok(h: &Members) -> bool {
    h.iter().all(|(k, v)| match k {
        // Typed as an optional string (`zip` and `enc` are strings too).
        "typ" | "cty" | "jku" | "kid" | "x5u" | "x5t" | "x5t#S256" | "zip" | "enc" | "url" | "nonce" => {
            v.is_string() || v.is_null()
        }
        "x5c" | "crit" => v.is_null() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        _ => true,
    })
}

/// A claim as jsonwebtoken's validation read it.
enum Claim<T> {
    Parsed(T),
    FailedToParse,
    NotPresent,
}

impl<T> Claim<T> {
    fn parsed(&self) -> bool {
        matches!(self, Claim::Parsed(_))
    }
}

/// A NumericDate: a non-negative integer, or a finite non-negative number below 2^64, rounded.
/// Anything else, `null` included, fails to parse.
fn numeric(v: Option<&Value>) -> Claim<u64> {
    let Some(v) = v else { return Claim::NotPresent };
    match v.as_number() {
        Some(n) if n.is_u64() => n.as_u64().map_or(Claim::FailedToParse, Claim::Parsed),
        Some(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Claim::Parsed(f.round() as u64),
            _ => Claim::FailedToParse,
        },
        _ => Claim::FailedToParse,
    }
}

/// A string or an array of strings (`iss`, `aud`); `null` is absent.
fn string_or_strings(v: Option<&Value>) -> Claim<Vec<&str>> {
    match v {
        None | Some(Value::Null) => Claim::NotPresent,
        Some(Value::String(s)) => Claim::Parsed(vec![s.as_str()]),
        Some(Value::Array(a)) => {
            a.iter().map(Value::as_str).collect::<Option<Vec<&str>>>().map_or(Claim::FailedToParse, Claim::Parsed)
        }
        Some(_) => Claim::FailedToParse,
    }
}

/// Whether a value can only have been half-read by jsonwebtoken's serde types, which then
/// refused the whole payload: `sub` as an array or object (its string reader does not consume
/// them), `exp`/`nbf` as a non-empty array or object (its number reader consumed only an empty
/// one).
fn unreadable(sub: Option<&Value>, exp: Option<&Value>, nbf: Option<&Value>) -> bool {
    let non_empty = |v: &Value| match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    };
    sub.is_some_and(|v| v.is_array() || v.is_object()) || exp.is_some_and(non_empty) || nbf.is_some_and(non_empty)
}

/// jsonwebtoken's claim validation under `v`, over an already parsed payload, in its order:
/// required claims (in a fixed order here, where jsonwebtoken walked a hash set), `exp`,
/// `nbf`, `sub`, `iss`, `aud`.
pub(super) fn validate(claims: &Members, v: &Validation, now: u64) -> Result<(), JwtError> {
    let (exp, nbf, sub) = (claims.get("exp"), claims.get("nbf"), claims.get("sub"));
    if unreadable(sub, exp, nbf) {
        return Err(JwtError::Malformed);
    }
    let exp = numeric(exp);
    let nbf = numeric(nbf);
    let sub = match sub {
        None | Some(Value::Null) => Claim::NotPresent,
        Some(Value::String(s)) => Claim::Parsed(s.as_str()),
        Some(_) => Claim::FailedToParse,
    };
    let iss = string_or_strings(claims.get("iss"));
    let aud = string_or_strings(claims.get("aud"));
    // One pass over the (few) required names rather than a SipHash of each name looked up.
    let mut required = [false; 5];
    for name in &v.required_spec_claims {
        if let Some(i) = ["exp", "sub", "iss", "aud", "nbf"].iter().position(|n| n == name) {
            required[i] = true;
        }
    }
    for (name, required, present) in [
        ("exp", required[0], exp.parsed()),
        ("sub", required[1], sub.parsed()),
        ("iss", required[2], iss.parsed()),
        ("aud", required[3], aud.parsed()),
        ("nbf", required[4], nbf.parsed()),
    ] {
        if required && !present {
            return Err(if name == "aud" { JwtError::BadAudience } else { JwtError::MissingClaim });
        }
    }
    if v.validate_exp || v.validate_nbf {
        if (v.validate_exp && matches!(exp, Claim::FailedToParse))
            || (v.validate_nbf && matches!(nbf, Claim::FailedToParse))
        {
            return Err(JwtError::Malformed);
        }
        if let Claim::Parsed(exp) = exp {
            if exp < v.reject_tokens_expiring_in_less_than {
                return Err(JwtError::Malformed);
            }
            if v.validate_exp && exp - v.reject_tokens_expiring_in_less_than < now.saturating_sub(v.leeway) {
                return Err(JwtError::Expired);
            }
        }
        if let Claim::Parsed(nbf) = nbf
            && v.validate_nbf
            && nbf > now.saturating_add(v.leeway)
        {
            return Err(JwtError::NotYetValid);
        }
    }
    if let (Claim::Parsed(sub), Some(want)) = (&sub, v.sub.as_deref())
        && *sub != want
    {
        // jsonwebtoken's InvalidSubject, which we never configure on the request path.
        return Err(JwtError::Malformed);
    }
    if let (Claim::Parsed(iss), Some(want)) = (&iss, &v.iss)
        && !iss.iter().any(|i| among(want, i))
    {
        return Err(JwtError::UnknownIssuer);
    }
    if !v.validate_aud {
        return Ok(());
    }
    match (&aud, &v.aud) {
        // An audience the token names, with none configured: not for us.
        (Claim::Parsed(_), None) => Err(JwtError::BadAudience),
        (Claim::Parsed(a), Some(want)) if !a.iter().any(|x| among(want, x)) => Err(JwtError::BadAudience),
        _ => Ok(()),
    }
}

/// Set membership; a configured set is usually one or two names, compared faster than hashed.
fn among(set: &std::collections::HashSet<String>, s: &str) -> bool {
    if set.len() <= 4 { set.iter().any(|x| x == s) } else { set.contains(s) }
}

#[cfg(test)]
mod tests;
