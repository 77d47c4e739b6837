//! `cedar`: how requests are mapped into Cedar.
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::headers::check_header_name;

/// Most metadata namespaces in each of `metadata_namespaces` / `route_metadata_namespaces`.
const MAX_NAMESPACES: usize = 16;
/// Longest metadata namespace name, in bytes.
const MAX_NAMESPACE_BYTES: usize = 128;
/// Most entries of a decision memo: each holds a key of at most 4 KiB and an outcome.
const MAX_MEMO_ENTRIES: u64 = 1_000_000;

/// Mapping of requests into Cedar.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CedarConfig {
    /// Request headers exposed to policies as tags on the `Route` resource
    /// (`resource.hasTag("x-tenant")`). Credentials are never exposed.
    #[serde(default)]
    pub context_headers: Vec<String>,
    /// `filter_metadata` namespaces of Envoy's `metadata_context` (dynamic metadata, sent for
    /// the ext_authz filter's `metadata_context_namespaces`) whose string fields become
    /// `Route` tags `metadata:<namespace>:<key>`. Default none.
    #[serde(default)]
    pub metadata_namespaces: Vec<String>,
    /// `filter_metadata` namespaces of Envoy's `route_metadata_context` (the matched route's
    /// metadata, sent for `route_metadata_context_namespaces`) whose string fields become
    /// `Route` tags `route_metadata:<namespace>:<key>`. Default none.
    #[serde(default)]
    pub route_metadata_namespaces: Vec<String>,
    /// Cedar's answers kept per policy snapshot, by everything the chosen policies can read.
    #[serde(default)]
    pub decision_memo: DecisionMemoConfig,
}

/// `cedar.decision_memo`: decide once per distinct input (exact: see `authz::memo`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionMemoConfig {
    /// Most decisions kept per snapshot (least recently used go first); 0 turns the memo off.
    #[serde(default = "default_memo_entries")]
    pub max_entries: u64,
}

fn default_memo_entries() -> u64 {
    10_000
}

impl Default for DecisionMemoConfig {
    fn default() -> Self {
        Self { max_entries: default_memo_entries() }
    }
}

impl CedarConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, hname) in self.context_headers.iter().enumerate() {
            check_header_name(&format!("cedar.context_headers[{i}]"), hname)?;
        }
        check_namespaces("cedar.metadata_namespaces", &self.metadata_namespaces)?;
        check_namespaces("cedar.route_metadata_namespaces", &self.route_metadata_namespaces)?;
        if self.decision_memo.max_entries > MAX_MEMO_ENTRIES {
            return Err(ConfigError::invalid(
                "cedar.decision_memo.max_entries",
                format!("at most {MAX_MEMO_ENTRIES} (0 turns the memo off)"),
            ));
        }
        Ok(())
    }
}

/// Namespaces are filter names (`envoy.filters.http.jwt_authn`, `com.example.route`): a `:`
/// would make the tag `<prefix>:<namespace>:<key>` ambiguous, so it is refused.
fn check_namespaces(field: &str, namespaces: &[String]) -> Result<(), ConfigError> {
    if namespaces.len() > MAX_NAMESPACES {
        return Err(ConfigError::invalid(field, format!("at most {MAX_NAMESPACES} namespaces")));
    }
    for (i, ns) in namespaces.iter().enumerate() {
        let ok = !ns.is_empty()
            && ns.len() <= MAX_NAMESPACE_BYTES
            && ns.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(ConfigError::invalid(
                format!("{field}[{i}]"),
                format!("`{ns}` is not a metadata namespace (1-{MAX_NAMESPACE_BYTES} of A-Z a-z 0-9 . _ -)"),
            ));
        }
        if namespaces[..i].contains(ns) {
            return Err(ConfigError::invalid(format!("{field}[{i}]"), format!("`{ns}` is listed twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ns: &[&str]) -> CedarConfig {
        CedarConfig { route_metadata_namespaces: ns.iter().map(|s| (*s).to_owned()).collect(), ..Default::default() }
    }

    #[test]
    fn metadata_namespaces_are_checked_and_named() {
        assert!(cfg(&["com.example.route", "envoy.filters.http.jwt_authn"]).validate().is_ok());
        for bad in [&["a:b"][..], &[""], &["ok", "ok"], &["sp ace"]] {
            let e = cfg(bad).validate().expect_err("refused").to_string();
            assert!(e.contains("cedar.route_metadata_namespaces["), "{e}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("ns{i}")).collect();
        let e = CedarConfig { metadata_namespaces: many, ..Default::default() }.validate().expect_err("too many");
        assert!(e.to_string().contains("cedar.metadata_namespaces"), "{e}");
    }

    #[test]
    fn the_decision_memo_is_on_by_default_bounded_and_named() {
        let memo = |yaml: &str| -> CedarConfig { serde_saphyr::from_str(yaml).expect("parses") };
        assert_eq!(memo("context_headers: []").decision_memo.max_entries, 10_000);
        assert_eq!(memo("decision_memo: {}").decision_memo.max_entries, 10_000);
        let off = memo("decision_memo: { max_entries: 0 }");
        assert_eq!(off.decision_memo.max_entries, 0);
        assert!(off.validate().is_ok());
        let huge = memo("decision_memo: { max_entries: 1000001 }");
        let e = huge.validate().expect_err("too large").to_string();
        assert!(e.contains("cedar.decision_memo.max_entries"), "{e}");
        assert!(serde_saphyr::from_str::<CedarConfig>("decision_memo: { entries: 5 }").is_err(), "unknown field");
    }
}
