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
        let headers = self
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
mod tests {
    use super::*;

    use serde_json::Map;

    use super::super::parse::read_object;

    fn hdr(json: &str) -> Members {
        serde_json::from_str::<Map<String, Value>>(json).unwrap().into()
    }

    /// What an identity maps to, for comparison.
    type Mapped = (String, Vec<String>, Vec<(String, String)>, Vec<(Bytes, Bytes)>, Vec<String>, Vec<String>);

    fn mapped(id: JwtIdentity) -> Mapped {
        assert_eq!(id.subject_value, Bytes::copy_from_slice(id.subject.as_bytes()));
        assert_eq!(id.issuer_value, Bytes::copy_from_slice(id.issuer.as_bytes()));
        (id.subject, id.groups, id.claims, id.headers, id.scopes, id.audiences)
    }

    /// The mapping as it was before the claims were taken by value and list values borrowed:
    /// every value copied, then sorted and deduplicated.
    fn identity_before(iss: &Issuer, claims: &Map<String, Value>) -> Result<Mapped, JwtError> {
        fn strings(v: &Value, out: &mut Vec<String>) -> Result<(), JwtError> {
            let mut push = |s: &str| {
                if out.len() >= claims::MAX_CLAIM_VALUES {
                    return Err(JwtError::TooManyClaimValues);
                }
                out.push(s.to_owned());
                Ok(())
            };
            match v {
                Value::Array(items) => items.iter().filter_map(Value::as_str).try_for_each(&mut push),
                Value::String(s) => s.split_whitespace().try_for_each(&mut push),
                _ => Ok(()),
            }
        }
        fn sorted(mut v: Vec<String>) -> Vec<String> {
            v.sort_unstable();
            v.dedup();
            v
        }
        for c in &iss.required_claims {
            if !claims.contains_key(c) {
                return Err(JwtError::MissingClaim);
            }
        }
        let subject = claims.get("sub").and_then(Value::as_str).ok_or(JwtError::MissingClaim)?.to_owned();
        let mut tags: Vec<(String, String)> = claims
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()) && !iss.group_claim_names.contains(k))
            .filter_map(|(k, v)| scalar_string(v).map(|s| (k.clone(), s)))
            .collect();
        for (path, tag) in &iss.claims_to_tags {
            tags.retain(|(k, _)| k != tag);
            if let Some(v) = claims::resolve_in(|k| claims.get(k), path).and_then(scalar_string) {
                tags.push((tag.clone(), v));
            }
        }
        let mut groups = Vec::new();
        for p in &iss.group_claims {
            if let Some(v) = claims::resolve_in(|k| claims.get(k), p) {
                strings(v, &mut groups)?;
            }
        }
        let groups = sorted(groups).into_iter().map(|g| iss.group_namespace.group_id(&iss.name, &g)).collect();
        let headers = iss
            .claims_to_headers
            .iter()
            .filter_map(|(claim, header)| {
                claims::resolve_in(|k| claims.get(k), claim)
                    .and_then(scalar_string)
                    .map(|v| (header.clone(), Bytes::from(v)))
            })
            .filter(|(_, v)| v.iter().all(|&b| b >= 0x20 && b != 0x7f))
            .collect();
        let mut scopes = Vec::new();
        for name in ["scope", "scp"] {
            if let Some(v) = claims.get(name) {
                strings(v, &mut scopes)?;
            }
        }
        let mut audiences = Vec::new();
        match claims.get("aud") {
            Some(Value::String(a)) => audiences.push(a.clone()),
            Some(v @ Value::Array(_)) => strings(v, &mut audiences)?,
            _ => {}
        }
        Ok((subject, groups, tags, headers, sorted(scopes), sorted(audiences)))
    }

    fn mapping_authenticator() -> JwtAuthenticator {
        let cfg = crate::config::Config::from_yaml(
            "policy: {dir: x}\nauthn:\n  group_namespace: per_issuer\n  issuers:\n    - issuer: https://issuer.test\n      \
             jwks_file: /nonexistent/jwks.json\n      required_claims: [email]\n      \
             group_claims: [groups, realm_access.roles]\n      \
             claims_to_headers: {email: x-email, /org/team: x-team, a.b: x-ab, n: x-n, name: x-name, /list/1: x-second}\n      \
             claims_to_tags: {/org/name: tenant, missing: gone, email: mail}\n",
        )
        .expect("parses");
        cfg.validate().expect("valid");
        JwtAuthenticator::new(&cfg.authn, &cfg.limits, &mut prometheus_client::registry::Registry::default())
            .expect("authenticator")
    }

    /// Hostile and ordinary claim sets map to exactly what the copying mapping made: duplicate
    /// claims (the last one wins, in the first one's place), escaped strings that become headers
    /// and tags (control characters keep a header out), huge and fractional numbers, nested and
    /// dotted paths, mapped tags replacing top-level ones, repeated list values and the bound.
    #[test]
    fn identities_map_exactly_as_the_copying_mapping_did() {
        let auth = mapping_authenticator();
        let iss = &auth.issuers[0];
        let many_repeats = vec!["g"; claims::MAX_CLAIM_VALUES];
        let too_many = vec!["g"; claims::MAX_CLAIM_VALUES + 1];
        let many_words = ["w"; claims::MAX_CLAIM_VALUES + 1].join(" ");
        let filler =
            |n: usize| -> String { (0..n).map(|i| format!(r#","t{i}":{}"#, ["1", "\"v\"", "null"][i % 3])).collect() };
        let cases = [
            r#"{"sub":"alice","email":"a@x","tenant":"acme","groups":["b","a","b",7,null],
               "realm_access":{"roles":["a","admin"]},"scope":"r w r  w","scp":["w","x",1],
               "aud":["y","x","y"],"org":{"team":"blue","name":"Org"},"jti":"j","iat":1,"flag":true}"#
                .to_owned(),
            // Duplicates: the later value, in the earlier one's position; a non-scalar one is no tag.
            r#"{"email":"first","sub":"s","tenant":"t","email":"second","tenant":{"o":1},"sub":"s2"}"#.to_owned(),
            // Escapes: quotes, backslashes, non-ASCII, surrogate pairs; control characters.
            r#"{"sub":"\"q\\\u00e9\ud83d\ude00","email":"a\u0000b","name":"x\ty","n":"\u007f","t":"\n"}"#.to_owned(),
            r#"{"sub":"s","email":"\u00e9\"\\","name":"\u2028\u2029","a.b":"top","a":{"b":"nested"}}"#.to_owned(),
            // Numbers: u64::MAX, one past it, the largest finite double, negatives, fractions.
            r#"{"sub":"s","email":1,"n":18446744073709551615,"big":18446744073709551616,"huge":1.7976931348623157e308,
               "neg":-9223372036854775809,"f":1.0,"tiny":1e-320,"name":-0.0,"x":0.1}"#
                .to_owned(),
            // Nested paths through arrays and past leaves; a dotted name absent at top level.
            r#"{"sub":"s","email":true,"a":{"b":["x"]},"org":{"team":{"x":1},"name":null},"list":["z","one"]}"#
                .to_owned(),
            r#"{"sub":"s","email":"e","org":"flat","list":{"1":"obj"},"groups":"x y x","realm_access":{"roles":"r r"}}"#
                .to_owned(),
            // Mapped tag names colliding with top-level claims.
            r#"{"sub":"s","email":"e","mail":"top","gone":"top","tenant":"top"}"#.to_owned(),
            // The bound counts repeats: at it; over it by groups, scopes, audiences.
            serde_json::json!({"sub": "s", "email": "e", "groups": many_repeats, "scope": "a a"}).to_string(),
            serde_json::json!({"sub": "s", "email": "e", "groups": too_many}).to_string(),
            serde_json::json!({"sub": "s", "email": "e", "scope": many_words}).to_string(),
            serde_json::json!({"sub": "s", "email": "e", "aud": too_many}).to_string(),
            serde_json::json!({"sub": "s", "email": "e", "aud": "a b", "scp": "a b"}).to_string(),
            // Missing what is required, or a subject that is not a string.
            r#"{"sub":"s"}"#.to_owned(),
            r#"{"email":"e","sub":5}"#.to_owned(),
            r#"{"email":"e"}"#.to_owned(),
            // Many members (past the bound where lookups stop scanning), duplicated near and far,
            // some spelled with escapes: the same tags in the same order with the same values.
            format!(
                r#"{{"sub":"s","email":"e","tenant":"t"{},"email":"e2","\u0074enant":"t2","t3":"x"{},"sub":"s2"}}"#,
                filler(40),
                filler(5)
            ),
            format!(r#"{{"mail":"m","groups":["a"]{},"groups":["b","c"],"org":{{"name":"o"}},"sub":"s","email":1}}"#, filler(1000)),
            format!(r#"{{"sub":"s","email":"e"{},"t0":{{"nested":1}},"t1":null,"t2":1.5e300}}"#, filler(33)),
        ];
        for json in &cases {
            let claims: Map<String, Value> = serde_json::from_str(json).expect("claims");
            let want = identity_before(iss, &claims);
            // As a token's payload is read (duplicates resolved while reading), and as stated.
            let (read, _) = read_object(json.as_bytes(), &[], 16).expect("claims");
            assert_eq!(iss.identity(read, 7, None, [0; 16]).map(mapped), want, "{json:.300}");
            let got = iss.identity(claims.clone().into(), 7, None, [0; 16]).map(mapped);
            assert_eq!(got, want, "{json:.300}");
            let via_test_tool = auth.identity_from_claims("https://issuer.test", &claims).map(mapped);
            assert_eq!(via_test_tool.map_err(|e| e.to_string()), want.map_err(|e| AuthnError::from(e).to_string()));
        }
        // The mapping did something in the first case (the comparison is not vacuous).
        let claims: Map<String, Value> = serde_json::from_str(&cases[0]).expect("claims");
        let (_, groups, tags, headers, scopes, audiences) =
            iss.identity(claims.into(), 7, None, [0; 16]).map(mapped).expect("maps");
        assert_eq!(groups, ["https://issuer.test#a", "https://issuer.test#admin", "https://issuer.test#b"]);
        assert_eq!(scopes, ["r", "w", "x"]);
        assert_eq!(audiences, ["x", "y"]);
        assert!(tags.contains(&("tenant".to_owned(), "Org".to_owned())), "{tags:?}");
        assert!(headers.contains(&(Bytes::from_static(b"x-team"), Bytes::from_static(b"blue"))), "{headers:?}");
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
    fn typ_is_compared_case_insensitively_with_an_optional_application_prefix() {
        let t = |v: Value| typ_matches(Some(&v), "at+jwt");
        for ok in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"] {
            assert!(t(Value::from(ok)), "{ok}");
        }
        for bad in ["JWT", "jwt", "at+jwt2", "application/jwt", "text/at+jwt", "", "id_token"] {
            assert!(!t(Value::from(bad)), "{bad}");
        }
        assert!(!t(serde_json::json!(["at+jwt"])));
        assert!(!typ_matches(None, "at+jwt"));
        assert!(typ_matches(Some(&Value::from("at+jwt")), "application/AT+JWT"));
    }

    #[test]
    fn iat_in_the_future_and_token_age() {
        let now = 1_000_000;
        // Within the leeway either way.
        assert_eq!(check_iat(Some(&Value::from(now + 30)), now, 30, None), Ok(None));
        assert_eq!(check_iat(Some(&Value::from(now + 31)), now, 30, None), Err(JwtError::IssuedInFuture));
        assert_eq!(check_iat(Some(&Value::from(u64::MAX)), now, 30, Some(60)), Err(JwtError::IssuedInFuture));
        assert_eq!(check_iat(Some(&Value::from(now - 90)), now, 30, Some(60)), Ok(Some(now - 30)));
        assert_eq!(check_iat(Some(&Value::from(now - 91)), now, 30, Some(60)), Err(JwtError::TooOld));
        assert_eq!(check_iat(Some(&Value::from(0)), now, 0, Some(60)), Err(JwtError::TooOld));
        // Without max_token_age an old token is fine, and iat is optional.
        assert_eq!(check_iat(Some(&Value::from(0)), now, 0, None), Ok(None));
        assert_eq!(check_iat(None, now, 0, None), Ok(None));
        assert_eq!(check_iat(None, now, 0, Some(60)), Err(JwtError::MissingClaim));
        // A fraction is a NumericDate; anything else is not.
        assert_eq!(check_iat(Some(&serde_json::json!(999_999.9)), now, 0, Some(60)), Ok(Some(999_999 + 60)));
        for bad in
            [serde_json::json!(-1), serde_json::json!("1000000"), serde_json::json!(null), serde_json::json!(1e300)]
        {
            assert_eq!(check_iat(Some(&bad), now, 30, None), Err(JwtError::Malformed), "{bad}");
        }
    }
}
