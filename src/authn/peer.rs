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

    fn check(cfg: &PeerConfig, principal: &str) -> Result<Option<PeerIdentity>, &'static str> {
        use crate::proto::auth::{AttributeContext, CheckRequest, attribute_context};
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(attribute_context::Peer { principal: principal.into(), ..Default::default() }),
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(attribute_context::HttpRequest {
                        method: "GET".into(),
                        path: "/".into(),
                        host: "a.example".into(),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        };
        let req_in = crate::proto::check_in(&req);
        let view = RequestView::from_check(&req_in, &crate::config::Limits::default()).expect("request view");
        PeerAuthenticator::new(cfg).authenticate(&view).map_err(|e| e.label())
    }

    #[test]
    fn only_cluster_local_is_trusted_by_default() {
        let cfg = PeerConfig::default();
        let ok = check(&cfg, "spiffe://cluster.local/ns/shop/sa/web").unwrap().expect("peer");
        assert_eq!(ok.trust_domain, "cluster.local");
        // Before: an empty default list accepted every trust domain.
        assert_eq!(check(&cfg, "spiffe://evil.example/ns/shop/sa/web").unwrap_err(), "untrusted_peer");
        assert_eq!(check(&cfg, "spiffe://cluster.local.evil/ns/shop/sa/web").unwrap_err(), "untrusted_peer");
    }

    #[test]
    fn an_empty_list_trusts_nothing_unless_any_trust_domain_is_set() {
        let empty = PeerConfig { trust_domains: Vec::new(), ..PeerConfig::default() };
        assert_eq!(check(&empty, "spiffe://cluster.local/ns/shop/sa/web").unwrap_err(), "untrusted_peer");
        let any = PeerConfig { trust_domains: Vec::new(), any_trust_domain: true, ..PeerConfig::default() };
        assert!(check(&any, "spiffe://elsewhere.example/ns/a/sa/b").unwrap().is_some());
        assert_eq!(check(&any, "spiffe://Elsewhere/x").unwrap_err(), "untrusted_peer", "still a valid SPIFFE id");
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
