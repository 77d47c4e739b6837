//! Verifying one token per RFC 8725: header checks before any key lookup, the issuer chosen by
//! `iss`, only that issuer's algorithms and keys, then claims.
use std::sync::Arc;

use bytes::Bytes;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde_json::Value;

use super::claims::{self, into_scalar_string, scalar_string};
use super::members::Members;
use super::parse::ParsedToken;
use super::{JwtAuthenticator, JwtError, JwtIdentity, RevocationFacts};
use crate::authn::AuthnError;
use crate::authn::jwks::{IssuerKeys, JwksMetrics, KeyLookupError, KeySource, VerifyKey, http_client};
use crate::config::{AuthnConfig, ClaimPath, GroupNamespace, IssuerConfig, JwtAlgorithm};

/// The jsonwebtoken algorithm for a configured one (the names are the same RFC 7518 names).
pub fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
    }
}

pub(super) struct Issuer {
    pub(super) name: Arc<str>,
    /// `name` as the upstream header value every identity of this issuer shares.
    pub(super) name_value: Bytes,
    /// Indices into `JwtAuthenticator::sources` this issuer's tokens may arrive from.
    pub(super) sources: Vec<usize>,
    pub(super) keys: Arc<IssuerKeys>,
    /// Per allowed algorithm: the claim rules (`exp`, `nbf`, `iss`, `aud`, required claims)
    /// `parse::validate` applies. A list: there are at most a dozen, compared faster than hashed.
    pub(super) validations: Vec<(Algorithm, Validation)>,
    pub(super) required_claims: Vec<String>,
    pub(super) group_claims: Vec<ClaimPath>,
    /// The group claims as configured: top-level claims of these names are not also tags.
    pub(super) group_claim_names: Vec<String>,
    pub(super) group_namespace: GroupNamespace,
    /// Header names lower-cased once, as `Bytes` each verified identity shares.
    pub(super) claims_to_headers: Vec<(ClaimPath, Bytes)>,
    pub(super) claims_to_tags: Vec<(ClaimPath, String)>,
    pub(super) required_typ: Option<String>,
    /// Seconds; `exp`, `nbf` and `iat` are judged with it.
    pub(super) leeway: u64,
    /// Seconds.
    pub(super) max_token_age: Option<u64>,
}

impl JwtAuthenticator {
    /// A token from a source its issuer does not list is refused: a cookie-borne token for an
    /// issuer configured for bearer headers only would otherwise open it to CSRF.
    pub(super) fn check_source(&self, issuer: usize, source: Option<usize>) -> Result<(), JwtError> {
        match (source, self.issuers.get(issuer)) {
            (None, Some(_)) => Ok(()),
            (Some(s), Some(iss)) if iss.sources.contains(&s) => Ok(()),
            _ => Err(JwtError::WrongSource),
        }
    }

    /// Verifies a token the caches did not answer: one parse (see `parse`), the issuer picked
    /// by the unverified `iss`, then the key, the signature and the claims. Returns the identity,
    /// the issuer's index and what revocation is judged on, read from the (now verified) claims;
    /// a refusal of the latter is the caller's to return after this succeeds, as before.
    pub(super) async fn verify_uncached(
        &self,
        token: &str,
        source: Option<usize>,
    ) -> Result<(Arc<JwtIdentity>, usize, Result<RevocationFacts, JwtError>), AuthnError> {
        let parsed = ParsedToken::parse(token)?;
        let alg = parsed.alg;
        let kid = parsed.header.get("kid").and_then(Value::as_str);
        // The payload is read unverified only to pick the issuer; nothing else is trusted yet.
        let iss_name = parsed.claims.get("iss").and_then(Value::as_str).ok_or(JwtError::UnknownIssuer)?;
        let idx = self.issuer_index(iss_name).ok_or(JwtError::UnknownIssuer)?;
        self.check_source(idx, source)?;
        let issuer = self.issuers.get(idx).ok_or(JwtError::UnknownIssuer)?;
        let validation = issuer.validation(alg).ok_or(JwtError::AlgorithmNotAllowed)?;

        let key = issuer.keys.key_for(kid).await.map_err(|e| match e {
            KeyLookupError::Unavailable => AuthnError::KeysUnavailable,
            KeyLookupError::UnknownKid => AuthnError::InvalidToken(JwtError::UnknownKey),
        })?;
        check_key_matches(&key, alg)?;

        let now = jsonwebtoken::get_current_timestamp();
        parsed.verify(&key.verifiers, validation, now)?;
        let ParsedToken { header, claims, .. } = parsed;
        // Checked on verified tokens only, so a forged token is refused for its signature.
        if let Some(want) = &issuer.required_typ
            && !typ_matches(header.get("typ"), want)
        {
            return Err(JwtError::WrongTokenType.into());
        }
        // Validated above (`exp` is required): a fractional one is a NumericDate too.
        let expires_at = claims.get("exp").and_then(numeric_date).ok_or(JwtError::MissingClaim)?;
        let too_old_at = check_iat(claims.get("iat"), now, issuer.leeway, issuer.max_token_age)?;
        // A cached token is dropped once it is too old, as at its `exp`.
        let expires_at = too_old_at.map_or(expires_at, |t| t.min(expires_at));
        let facts = RevocationFacts::from_claims(&claims);
        let identity = issuer.identity(claims, expires_at, key.kid.clone(), key.fingerprint)?;
        Ok((Arc::new(identity), idx, facts))
    }
}

impl Issuer {
    /// The claim rules for tokens of `alg`, if this issuer allows it.
    pub(super) fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations.iter().find(|(a, _)| *a == alg).map(|(_, v)| v)
    }

    /// What verified claims prove under this issuer's mapping (groups, claim headers, tags):
    /// the one mapping, shared by token verification and `portcullis test`'s stated identities.
    /// Takes the claims, so that the subject and the top-level claims that become tags move
    /// into the identity instead of being copied.
    pub(super) fn identity(
        &self,
        claims: Members,
        expires_at: u64,
        kid: Option<String>,
        key_fingerprint: [u8; 16],
    ) -> Result<JwtIdentity, JwtError> {
        for c in &self.required_claims {
            if !claims.contains_key(c) {
                return Err(JwtError::MissingClaim);
            }
        }
        // Checked here, moved out of the claims below.
        if !claims.get("sub").is_some_and(Value::is_string) {
            return Err(JwtError::MissingClaim);
        }
        let groups = claims::groups(&claims, &self.group_claims, |g| self.group_namespace.group_id(&self.name, g))?;
        let scopes = claims::scopes(&claims)?;
        let audiences = claims::audiences(&claims)?;
        let mut headers: Vec<(Bytes, Bytes)> = self
            .claims_to_headers
            .iter()
            .filter_map(|(claim, header)| {
                claims::resolve(&claims, claim).and_then(scalar_string).map(|v| (header.clone(), Bytes::from(v)))
            })
            .filter(|(_, v)| v.iter().all(|&b| b >= 0x20 && b != 0x7f))
            .collect();
        // Read before the claims are taken apart below (the paths may reach any claim).
        let mapped_tags: Vec<(&String, Option<String>)> = self
            .claims_to_tags
            .iter()
            .map(|(path, tag)| (tag, claims::resolve(&claims, path).and_then(scalar_string)))
            .collect();
        let mut subject = String::new();
        let mut tags: Vec<(String, String)> = Vec::new();
        for (k, v) in claims {
            if k == "sub" {
                if let Value::String(s) = v {
                    subject = s;
                }
            } else if !RESERVED.contains(&&*k)
                && !self.group_claim_names.iter().any(|g| *g == k)
                && let Some(s) = into_scalar_string(v)
            {
                tags.push((k.into_owned(), s));
            }
        }
        // A mapped tag replaces a top-level claim of the same name; an absent or non-scalar
        // value leaves no tag of that name at all, so `hasTag` never sees the top-level one.
        for (tag, v) in mapped_tags {
            tags.retain(|(k, _)| k != tag);
            if let Some(v) = v {
                tags.push((tag.clone(), v));
            }
        }
        // The identity lives in the verified-token cache (up to `max_entries` of them): no
        // growth slack (a pushed-to Vec holds room for 4 or 8), ~340 bytes an entry in the flood.
        headers.shrink_to_fit();
        tags.shrink_to_fit();
        Ok(JwtIdentity {
            issuer: self.name.clone(),
            subject_value: Bytes::copy_from_slice(subject.as_bytes()),
            issuer_value: self.name_value.clone(),
            subject,
            groups,
            headers,
            claims: tags,
            scopes,
            audiences,
            expires_at,
            kid,
            key_fingerprint,
            upstream: Default::default(),
        })
    }
}

const RESERVED: &[&str] = &["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

pub(super) fn build_issuer(
    ic: &IssuerConfig,
    cfg: &AuthnConfig,
    client: reqwest::Client,
    metrics: JwksMetrics,
) -> anyhow::Result<Issuer> {
    let client = match &ic.ca_file {
        Some(path) => http_client(cfg, Some(path)).map_err(|e| anyhow::anyhow!("issuer {}: {e}", ic.issuer))?,
        None => client,
    };
    let source = if let Some(path) = &ic.hmac_secret_file {
        let secret =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("issuer {}: reading hmac_secret_file: {e}", ic.issuer))?;
        let secret: Vec<u8> = secret.trim_ascii().to_vec();
        if secret.len() < 32 {
            anyhow::bail!("issuer {}: HMAC secret must be at least 32 bytes", ic.issuer);
        }
        KeySource::Hmac(Arc::new(secret))
    } else if let Some(f) = &ic.jwks_file {
        KeySource::File(f.clone())
    } else if let Some(u) = &ic.jwks_uri {
        KeySource::Uri(u.clone())
    } else {
        KeySource::Discovery { issuer: ic.issuer.clone() }
    };
    let mut validations: Vec<(Algorithm, Validation)> = Vec::new();
    for a in &ic.algorithms {
        let alg = algorithm(*a);
        let mut v = Validation::new(alg);
        v.set_issuer(&[ic.issuer.as_str()]);
        if ic.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&ic.audiences);
        }
        v.leeway = ic.leeway.as_secs();
        v.validate_nbf = true;
        // jsonwebtoken checks `aud` only when the token has one: with audiences configured, a
        // token without `aud` must not slip through, so make it required.
        if ic.audiences.is_empty() {
            v.set_required_spec_claims(&["exp", "sub", "iss"]);
        } else {
            v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        }
        match validations.iter_mut().find(|(a, _)| *a == alg) {
            Some(slot) => slot.1 = v,
            None => validations.push((alg, v)),
        }
    }
    let parse =
        |field: String, c: &str| ClaimPath::parse(c).map_err(|e| anyhow::anyhow!("issuer {}: {field}: {e}", ic.issuer));
    let group_claims =
        ic.group_claims.iter().map(|c| parse("group_claims".into(), c)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut claims_to_headers = Vec::new();
    for (c, h) in &ic.claims_to_headers {
        claims_to_headers.push((parse(format!("claims_to_headers.{c}"), c)?, Bytes::from(h.to_ascii_lowercase())));
    }
    let mut claims_to_tags = Vec::new();
    for (c, t) in &ic.claims_to_tags {
        claims_to_tags.push((parse(format!("claims_to_tags.{c}"), c)?, t.clone()));
    }
    Ok(Issuer {
        name: Arc::from(ic.issuer.as_str()),
        name_value: Bytes::copy_from_slice(ic.issuer.as_bytes()),
        sources: Vec::new(),
        keys: IssuerKeys::with_unknown_kid_wait(
            ic.issuer.clone(),
            source,
            cfg.jwks.clone(),
            client,
            ic.allow_insecure_http,
            metrics,
            cfg.unknown_kid_wait,
        ),
        validations,
        required_claims: ic.required_claims.clone(),
        group_claims,
        group_claim_names: ic.group_claims.clone(),
        group_namespace: cfg.group_namespace.unwrap_or_default(),
        claims_to_headers,
        claims_to_tags,
        required_typ: ic.required_typ.clone(),
        leeway: ic.leeway.as_secs(),
        max_token_age: ic.max_token_age.map(|d| d.as_secs()),
    })
}

/// RFC 8725 header checks, before any key is looked up.
pub(super) fn check_header(h: &Members) -> Result<Algorithm, JwtError> {
    let alg = h.get("alg").and_then(Value::as_str).ok_or(JwtError::Malformed)?;
    if alg.trim().eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    if h.contains_key("enc") {
        return Err(JwtError::Encrypted);
    }
    if ["jwk", "jku", "x5u", "x5c"].iter().any(|k| h.contains_key(k)) {
        return Err(JwtError::EmbeddedKey);
    }
    // We implement no JWS extensions, so any `crit` entry is one we do not understand.
    if h.contains_key("crit") {
        return Err(JwtError::UnknownCritical);
    }
    if h.get("kid").is_some_and(|k| !k.is_string()) {
        return Err(JwtError::Malformed);
    }
    JwtAlgorithm::from_name(alg).map(algorithm).ok_or(JwtError::UnsupportedAlgorithm)
}

/// The key must be of the token's family and, if the JWK pins an `alg`, that exact alg.
pub(super) fn check_key_matches(key: &VerifyKey, alg: Algorithm) -> Result<(), JwtError> {
    if key.family != alg.family() {
        return Err(JwtError::KeyMismatch);
    }
    if key.alg.is_some_and(|a| a != alg) {
        return Err(JwtError::KeyMismatch);
    }
    if key.family == AlgorithmFamily::Hmac && !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(JwtError::KeyMismatch);
    }
    Ok(())
}

/// jsonwebtoken's error kinds as our labels (the differential tests compare with
/// `jsonwebtoken::decode` through it).
#[cfg(test)]
pub(super) fn map_jwt_error(e: jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => JwtError::BadSignature,
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidAudience => JwtError::BadAudience,
        K::InvalidIssuer => JwtError::UnknownIssuer,
        K::MissingRequiredClaim(c) if c == "aud" => JwtError::BadAudience,
        K::MissingRequiredClaim(_) => JwtError::MissingClaim,
        K::InvalidAlgorithm => JwtError::AlgorithmNotAllowed,
        K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => JwtError::KeyMismatch,
        _ => JwtError::Malformed,
    }
}

/// A media type without its optional `application/` prefix (RFC 7515 §4.1.9).
fn media_subtype(t: &str) -> &str {
    let t = t.trim();
    match t.get(..12) {
        Some(p) if p.eq_ignore_ascii_case("application/") => &t[12..],
        _ => t,
    }
}

/// Whether the header's `typ` is the required one (RFC 8725 §3.11): case-insensitive, with or
/// without `application/`. A missing or non-string `typ` never matches.
fn typ_matches(typ: Option<&Value>, want: &str) -> bool {
    typ.and_then(Value::as_str).is_some_and(|t| media_subtype(t).eq_ignore_ascii_case(media_subtype(want)))
}

/// A NumericDate (RFC 7519 §2: seconds, possibly with a fraction) in whole seconds, the
/// fraction dropped: a token is never kept past its `exp` for it. `None` for anything that is
/// not a non-negative number within `u64`.
pub(super) fn numeric_date(v: &Value) -> Option<u64> {
    match (v.as_u64(), v.as_f64()) {
        (Some(i), _) => Some(i),
        (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Some(f as u64),
        _ => None,
    }
}

/// `iat` must not be in the future beyond `leeway`; with `max_age` it must be present and not
/// older than `max_age` (plus `leeway`). Returns when the token becomes too old. A NumericDate
/// may have a fraction (RFC 7519 §2); an `iat` that is not a non-negative number is malformed.
fn check_iat(iat: Option<&Value>, now: u64, leeway: u64, max_age: Option<u64>) -> Result<Option<u64>, JwtError> {
    let iat = match iat {
        None if max_age.is_some() => return Err(JwtError::MissingClaim),
        None => return Ok(None),
        Some(v) => numeric_date(v).ok_or(JwtError::Malformed)?,
    };
    if iat > now.saturating_add(leeway) {
        return Err(JwtError::IssuedInFuture);
    }
    let Some(max_age) = max_age else { return Ok(None) };
    let too_old_at = iat.saturating_add(max_age);
    if now > too_old_at.saturating_add(leeway) {
        return Err(JwtError::TooOld);
    }
    Ok(Some(too_old_at))
}

#[cfg(test)]
mod tests;
