//! API keys: compared by SHA-256 digest, so neither the config nor memory holds a usable key.
//! Keys come from the config (`keys`, for local use) and from Secrets: a mounted Secret volume
//! ([`files`]) or labelled Secrets through the Kubernetes API ([`kube`]), swapped as a whole set by [`store::KeyStore`]; expiry is checked on every request.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::config::ApiKeyConfig;
use crate::request::RequestView;

use super::AuthnError;

pub mod files;
pub mod keyset;
pub mod kube;
pub mod store;

pub use store::{KeyStatus, KeyStore};

/// A client proven by its API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClientIdentity {
    pub client: String,
    pub groups: Vec<String>,
    /// The key's own rate limit (from its Secret entry), used instead of the global one.
    pub rate_limit: Option<KeyRateLimit>,
}

/// A per-key rate limit: `requests_per_second` sustained, `burst` at once (both at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRateLimit {
    pub requests_per_second: std::num::NonZeroU32,
    pub burst: std::num::NonZeroU32,
}

/// Looks keys up by digest.
pub struct ApiKeyAuthenticator {
    header: String,
    by_digest: HashMap<[u8; 32], Arc<ApiClientIdentity>>,
    /// Keys from Secrets, when a Secret source is configured.
    secrets: Option<Arc<KeyStore>>,
}

impl ApiKeyAuthenticator {
    /// The inline keys; with a Secret source (`dir`), its first read must succeed: a sidecar
    /// that starts without its keys would refuse every API client.
    pub fn new(cfg: &ApiKeyConfig, registry: &mut prometheus_client::registry::Registry) -> anyhow::Result<Self> {
        let mut by_digest = HashMap::new();
        let mut inline = HashMap::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            let mut d = [0u8; 32];
            // Config validation guarantees 64 hex characters.
            if hex::decode_to_slice(&k.sha256, &mut d).is_ok() {
                by_digest.insert(
                    d,
                    Arc::new(ApiClientIdentity {
                        client: k.client.clone(),
                        groups: k.groups.clone(),
                        rate_limit: None,
                    }),
                );
                inline.insert(d, format!("authn.api_keys.keys[{i}]"));
            }
        }
        let secrets = match (&cfg.dir, &cfg.kubernetes) {
            (Some(dir), _) => {
                let store = KeyStore::new(inline, registry);
                files::load_into(dir, &store)
                    .map_err(|e| anyhow::anyhow!("authn.api_keys.dir: API keys could not be loaded: {e}"))?;
                Some(Arc::new(store))
            }
            // Filled by the watch once every namespace has been listed; until then no Secret
            // key is known, so API clients are refused (fail closed).
            (None, Some(_)) => Some(Arc::new(KeyStore::new(inline, registry))),
            (None, None) => None,
        };
        Ok(Self { header: cfg.header.to_ascii_lowercase(), by_digest, secrets })
    }

    /// Whether any key source is configured (without one the header is ignored entirely).
    pub fn enabled(&self) -> bool {
        !self.by_digest.is_empty() || self.secrets.is_some()
    }

    /// The Secret-backed key store, for its watcher and diagnostics.
    pub fn secrets(&self) -> Option<&Arc<KeyStore>> {
        self.secrets.as_ref()
    }

    pub fn header(&self) -> &str {
        &self.header
    }

    pub fn authenticate(&self, req: &RequestView<'_>) -> Result<Option<Arc<ApiClientIdentity>>, AuthnError> {
        if !self.enabled() {
            return Ok(None);
        }
        match req.header_count(&self.header) {
            0 => return Ok(None),
            1 => {}
            _ => return Err(AuthnError::DuplicateCredential(super::Credential::ApiKey)),
        }
        // Present but unreadable (empty, or not UTF-8) is refused, never read as "no key".
        let malformed = || AuthnError::MalformedCredential(super::Credential::ApiKey);
        if req.has_invalid_value(&self.header) {
            return Err(malformed());
        }
        let key = req.header(&self.header).unwrap_or("");
        if key.trim_matches([' ', '\t']).is_empty() {
            return Err(malformed());
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some(id) = self.by_digest.get(&digest) {
            return Ok(Some(id.clone()));
        }
        if let Some(store) = &self.secrets
            && let Some(entry) = store.load().by_digest.get(&digest)
        {
            if keyset::expired(entry.expires_at, SystemTime::now()) {
                tracing::debug!(key = %super::fingerprint(key.as_bytes()), client = %entry.identity.client, "expired API key");
                return Err(AuthnError::InvalidApiKey);
            }
            return Ok(Some(entry.identity.clone()));
        }
        tracing::debug!(key = %super::fingerprint(key.as_bytes()), "unknown API key");
        Err(AuthnError::InvalidApiKey)
    }
}
