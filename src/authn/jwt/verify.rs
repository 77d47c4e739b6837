//! Verifying one token per RFC 8725: header checks before any key lookup, the issuer chosen by
//! `iss`, only that issuer's algorithms and keys, then claims.
use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde_json::{Map, Value};

use super::{JwtAuthenticator, JwtError, JwtIdentity};
use crate::authn::AuthnError;
use crate::authn::jwks::{IssuerKeys, JwksMetrics, KeyLookupError, KeySource, VerifyKey, http_client};
use crate::config::{AuthnConfig, GroupNamespace, IssuerConfig, JwtAlgorithm};

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
    /// Indices into `JwtAuthenticator::sources` this issuer's tokens may arrive from.
    pub(super) sources: Vec<usize>,
    pub(super) keys: Arc<IssuerKeys>,
    pub(super) validations: HashMap<Algorithm, Validation>,
    pub(super) required_claims: Vec<String>,
    pub(super) group_claims: Vec<String>,
    pub(super) group_namespace: GroupNamespace,
    pub(super) claims_to_headers: Vec<(String, String)>,
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

    pub(super) async fn verify_uncached(
        &self,
        token: &str,
        source: Option<usize>,
    ) -> Result<(Arc<JwtIdentity>, usize), AuthnError> {
        let parts: Vec<&str> = token.split('.').collect();
        match parts.len() {
            3 => {}
            5 => return Err(JwtError::Encrypted.into()),
            _ => return Err(JwtError::Malformed.into()),
        }
        let header = decode_segment(parts[0])?;
        let alg = check_header(&header)?;
        let kid = header.get("kid").and_then(Value::as_str);
        // The payload is read unverified only to pick the issuer; nothing else is trusted yet.
        let unverified = decode_segment(parts[1])?;
        let iss_name = unverified.get("iss").and_then(Value::as_str).ok_or(JwtError::UnknownIssuer)?;
        let idx = *self.by_name.get(iss_name).ok_or(JwtError::UnknownIssuer)?;
        self.check_source(idx, source)?;
        let issuer = &self.issuers[idx];
        let validation = issuer.validations.get(&alg).ok_or(JwtError::AlgorithmNotAllowed)?;

        let key = issuer.keys.key_for(kid).await.map_err(|e| match e {
            KeyLookupError::Unavailable => AuthnError::KeysUnavailable,
            KeyLookupError::UnknownKid => AuthnError::InvalidToken(JwtError::UnknownKey),
        })?;
        check_key_matches(&key, alg)?;

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation).map_err(map_jwt_error)?;
        let claims = data.claims;
        let expires_at = claims.get("exp").and_then(Value::as_u64).ok_or(JwtError::MissingClaim)?;
        let identity = issuer.identity(&claims, expires_at, key.kid.clone(), key.fingerprint)?;
        Ok((Arc::new(identity), idx))
    }
}

impl Issuer {
    /// What verified claims prove under this issuer's mapping (groups, claim headers, tags):
    /// the one mapping, shared by token verification and `portcullis test`'s stated identities.
    pub(super) fn identity(
        &self,
        claims: &Map<String, Value>,
        expires_at: u64,
        kid: Option<String>,
        key_fingerprint: [u8; 16],
    ) -> Result<JwtIdentity, JwtError> {
        for c in &self.required_claims {
            if !claims.contains_key(c) {
                return Err(JwtError::MissingClaim);
            }
        }
        let subject = claims.get("sub").and_then(Value::as_str).ok_or(JwtError::MissingClaim)?.to_owned();
        Ok(JwtIdentity {
            issuer: self.name.clone(),
            subject,
            groups: collect_groups(claims, &self.group_claims)
                .into_iter()
                .map(|g| self.group_namespace.group_id(&self.name, &g))
                .collect(),
            headers: self
                .claims_to_headers
                .iter()
                .filter_map(|(claim, header)| claims.get(claim).and_then(scalar_string).map(|v| (header.clone(), v)))
                .filter(|(_, v)| v.bytes().all(|b| b >= 0x20 && b != 0x7f))
                .collect(),
            claims: claims
                .iter()
                .filter(|(k, _)| !RESERVED.contains(&k.as_str()) && !self.group_claims.contains(k))
                .filter_map(|(k, v)| scalar_string(v).map(|s| (k.clone(), s)))
                .collect(),
            audiences: match claims.get("aud") {
                Some(Value::String(a)) => vec![a.clone()],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                _ => Vec::new(),
            },
            expires_at,
            kid,
            key_fingerprint,
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
    let mut validations = HashMap::new();
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
        validations.insert(alg, v);
    }
    Ok(Issuer {
        name: Arc::from(ic.issuer.as_str()),
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
        group_claims: ic.group_claims.clone(),
        group_namespace: cfg.group_namespace.unwrap_or_default(),
        claims_to_headers: ic.claims_to_headers.iter().map(|(c, h)| (c.clone(), h.to_ascii_lowercase())).collect(),
    })
}

fn decode_segment(seg: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(seg).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// RFC 8725 header checks, before any key is looked up.
fn check_header(h: &Map<String, Value>) -> Result<Algorithm, JwtError> {
    let alg = h.get("alg").and_then(Value::as_str).ok_or(JwtError::Malformed)?;
    if alg.trim().eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    if h.contains_key("enc") {
        return Err(JwtError::Encrypted);
    }
    if ["jwk", "jku", "x5u", "x5c"].iter().any(|k| h.contains_key(*k)) {
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
fn check_key_matches(key: &VerifyKey, alg: Algorithm) -> Result<(), JwtError> {
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

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> JwtError {
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

fn collect_groups(claims: &Map<String, Value>, names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        match claims.get(n) {
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned)),
            // OAuth `scope`-style space-separated lists.
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_owned)),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn none_in_any_spelling_is_refused() {
        for a in ["none", "None", "NONE", "nOnE", " none"] {
            assert_eq!(check_header(&hdr(&format!(r#"{{"alg":"{a}"}}"#))), Err(JwtError::AlgNone), "{a}");
        }
    }

    #[test]
    fn embedded_keys_and_crit_are_refused() {
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256","jku":"http://x"}"#)), Err(JwtError::EmbeddedKey));
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256","jwk":{}}"#)), Err(JwtError::EmbeddedKey));
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256","x5u":"http://x"}"#)), Err(JwtError::EmbeddedKey));
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256","x5c":["x"]}"#)), Err(JwtError::EmbeddedKey));
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256","crit":["exp"]}"#)), Err(JwtError::UnknownCritical));
        assert_eq!(check_header(&hdr(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)), Err(JwtError::Encrypted));
        assert_eq!(check_header(&hdr(r#"{"alg":"RS256"}"#)), Ok(Algorithm::RS256));
    }

    #[test]
    fn every_configured_algorithm_maps_to_the_jsonwebtoken_one_of_the_same_name() {
        for a in JwtAlgorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>().ok(), Some(algorithm(a)), "{a:?}");
            assert_eq!(a.is_hmac(), algorithm(a).family() == AlgorithmFamily::Hmac, "{a:?}");
        }
        // A token's `alg` goes through the same exact-name table.
        assert_eq!(check_header(&hdr(r#"{"alg":"rs256"}"#)), Err(JwtError::UnsupportedAlgorithm));
        assert_eq!(check_header(&hdr(r#"{"alg":"EdDSA"}"#)), Ok(Algorithm::EdDSA));
    }

    #[test]
    fn groups_come_from_arrays_and_space_lists() {
        let c: Map<String, Value> = serde_json::from_str(r#"{"groups":["b","a"],"roles":"x y"}"#).unwrap();
        assert_eq!(collect_groups(&c, &["groups".into(), "roles".into()]), vec!["a", "b", "x", "y"]);
    }
}
