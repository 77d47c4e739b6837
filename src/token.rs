//! Dev-only token minting and JWKS printing, so the built-in example can be tried without an
//! identity provider. Never point production issuers at keys used with this.
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
