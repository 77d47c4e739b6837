//! API keys: compared by SHA-256 digest, so the config never holds a usable key.
use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::ApiKeyConfig;
use crate::request::RequestView;

use super::AuthnError;

/// A client proven by its API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClientIdentity {
    pub client: String,
    pub groups: Vec<String>,
}

/// Looks keys up by digest.
pub struct ApiKeyAuthenticator {
    header: String,
    by_digest: HashMap<[u8; 32], Arc<ApiClientIdentity>>,
}

impl ApiKeyAuthenticator {
    pub fn new(cfg: &ApiKeyConfig) -> Self {
        let mut by_digest = HashMap::new();
        for k in &cfg.keys {
            let mut d = [0u8; 32];
            // Config validation guarantees 64 hex characters.
            if hex::decode_to_slice(&k.sha256, &mut d).is_ok() {
                by_digest.insert(d, Arc::new(ApiClientIdentity { client: k.client.clone(), groups: k.groups.clone() }));
            }
        }
        Self { header: cfg.header.to_ascii_lowercase(), by_digest }
    }

    /// Whether any key is configured (without keys the header is ignored entirely).
    pub fn enabled(&self) -> bool {
        !self.by_digest.is_empty()
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
        match self.by_digest.get(&digest) {
            Some(id) => Ok(Some(id.clone())),
            None => {
                tracing::debug!(key = %super::fingerprint(key.as_bytes()), "unknown API key");
                Err(AuthnError::InvalidApiKey)
            }
        }
    }
}
