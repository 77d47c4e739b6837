//! Dev-only token minting and JWKS printing, so the built-in example can be tried without an
//! identity provider. Never point production issuers at keys used with this: `portcullis token`
//! runs only when asked for explicitly (`--dev` / `PORTCULLIS_DEV=1`), and `serve` warns loudly
//! when an issuer trusts the committed demo key.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub issuer: String,
    pub subject: String,
    pub audience: Option<String>,
    pub groups: Vec<String>,
    pub ttl: Duration,
    pub kid: Option<String>,
    pub extra: BTreeMap<String, Value>,
}

fn encoding_key(pem: &[u8], alg: Algorithm) -> anyhow::Result<EncodingKey> {
    Ok(match alg.family() {
        jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem)?,
        jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem)?,
        jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem)?,
        jsonwebtoken::AlgorithmFamily::Hmac => EncodingKey::from_secret(pem.trim_ascii()),
    })
}

/// Signs a token with a PEM private key (or an HMAC secret file for HS*).
pub fn mint(key_file: &Path, alg: Algorithm, spec: &TokenSpec) -> anyhow::Result<String> {
    let pem = std::fs::read(key_file).with_context(|| format!("reading {}", key_file.display()))?;
    let key = encoding_key(&pem, alg)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::Map::new();
    claims.insert("iss".into(), spec.issuer.clone().into());
    claims.insert("sub".into(), spec.subject.clone().into());
    if let Some(a) = &spec.audience {
        claims.insert("aud".into(), a.clone().into());
    }
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), (now + spec.ttl.as_secs()).into());
    if !spec.groups.is_empty() {
        claims.insert("groups".into(), spec.groups.clone().into());
    }
    for (k, v) in &spec.extra {
        claims.insert(k.clone(), v.clone());
    }
    let mut header = Header::new(alg);
    header.kid = spec.kid.clone();
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

/// The public JWKS for a private key, with `kid`, `alg` and `use: sig` set.
pub fn jwks_for(key_file: &Path, alg: Algorithm, kid: &str) -> anyhow::Result<JwkSet> {
    let pem = std::fs::read(key_file).with_context(|| format!("reading {}", key_file.display()))?;
    let key = encoding_key(&pem, alg)?;
    let mut jwk = Jwk::from_encoding_key(&key, alg)?;
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    Ok(JwkSet { keys: vec![jwk] })
}

/// The public half of the committed demo signing key, which anyone can sign with.
const DEMO_JWKS: &str = include_str!("../examples/demo/jwks.json");

/// The RSA moduli of a JWKS document (empty when it does not parse).
fn rsa_moduli(jwks: &str) -> Vec<String> {
    let Ok(set) = serde_json::from_str::<Value>(jwks) else { return Vec::new() };
    let keys = set.get("keys").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    keys.iter().filter_map(|k| k.get("n").and_then(Value::as_str)).map(str::to_owned).collect()
}

/// Whether a JWKS document holds the committed demo key.
pub fn holds_demo_key(jwks: &str) -> bool {
    let demo = rsa_moduli(DEMO_JWKS);
    rsa_moduli(jwks).iter().any(|n| demo.contains(n))
}

/// Issuers whose `jwks_file` holds the committed demo key: tokens for them can be minted by
/// anyone with a checkout of this repository.
pub fn issuers_trusting_demo_key(cfg: &crate::config::Config) -> Vec<String> {
    cfg.authn
        .issuers
        .iter()
        .filter(|i| {
            i.jwks_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).is_some_and(|j| holds_demo_key(&j))
        })
        .map(|i| i.issuer.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_key_is_recognized_and_other_keys_are_not() {
        assert!(holds_demo_key(DEMO_JWKS));
        let other = r#"{"keys":[{"kty":"RSA","kid":"k","n":"AQAB-not-the-demo","e":"AQAB"}]}"#;
        assert!(!holds_demo_key(other));
        assert!(!holds_demo_key("not json"));
        assert!(!holds_demo_key(r#"{"keys":"nope"}"#));
    }
}
