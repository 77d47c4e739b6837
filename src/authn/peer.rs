//! mTLS peer identity: the SPIFFE id Envoy (or Istio) put in `attributes.source.principal`
//! after verifying the client certificate.
use crate::config::PeerConfig;
use crate::request::RequestView;

use super::AuthnError;

/// A verified workload identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Full SPIFFE id, e.g. `spiffe://cluster.local/ns/shop/sa/web`.
    pub spiffe_id: String,
    pub trust_domain: String,
    /// Istio's `ns` segment, empty if the id has another shape.
    pub namespace: String,
    /// Istio's `sa` segment, empty if the id has another shape.
    pub service_account: String,
}

/// Parses and checks peer principals against the trusted domains.
pub struct PeerAuthenticator {
    enabled: bool,
    trust_domains: Vec<String>,
    /// Only from an explicit `any_trust_domain: true`; an empty list alone accepts nothing.
    any_trust_domain: bool,
}

impl PeerAuthenticator {
    pub fn new(cfg: &PeerConfig) -> Self {
        Self {
            enabled: cfg.enabled,
            trust_domains: cfg.trust_domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            any_trust_domain: cfg.any_trust_domain,
        }
    }

    /// `Ok(None)` without a peer principal; an error for one that is malformed or untrusted.
    pub fn authenticate(&self, req: &RequestView<'_>) -> Result<Option<PeerIdentity>, AuthnError> {
        if !self.enabled {
            return Ok(None);
        }
        let Some(principal) = req.source_principal else {
            return Ok(None);
        };
        let id = parse_spiffe_id(principal).ok_or(AuthnError::UntrustedPeer("not_a_spiffe_id"))?;
        if !self.any_trust_domain && !self.trust_domains.contains(&id.trust_domain) {
            return Err(AuthnError::UntrustedPeer("trust_domain"));
        }
        Ok(Some(id))
    }
}

/// Parses `spiffe://<trust-domain>/<path>` per the SPIFFE ID spec (lower-case trust domain,
/// non-empty path segments without dot segments).
pub fn parse_spiffe_id(s: &str) -> Option<PeerIdentity> {
    let rest = s.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    let td_ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if !td_ok || path.is_empty() || s.len() > 2048 {
        return None;
    }
    let segs: Vec<&str> = path.split('/').collect();
    let seg_ok = |g: &&str| {
        !g.is_empty()
            && *g != "."
            && *g != ".."
            && g.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    if !segs.iter().all(seg_ok) {
        return None;
    }
    let (namespace, service_account) = match segs.as_slice() {
        ["ns", ns, "sa", sa] => ((*ns).to_owned(), (*sa).to_owned()),
        _ => (String::new(), String::new()),
    };
    Some(PeerIdentity { spiffe_id: s.to_owned(), trust_domain: td.to_owned(), namespace, service_account })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_ids_parse_into_namespace_and_account() {
        let p = parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(
            (p.trust_domain.as_str(), p.namespace.as_str(), p.service_account.as_str()),
            ("cluster.local", "shop", "web")
        );
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://user@cluster.local/x",
        ] {
            assert!(parse_spiffe_id(bad).is_none(), "{bad}");
        }
    }
}
