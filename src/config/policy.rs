//! `policy`: where Cedar policies come from.
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ConfigError, yes};

/// Policy sources. Exactly one of `dir` or `kubernetes`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A directory of `*.cedar`, `*.cedarschema` and `*.entities.json` files, or a mounted
    /// ConfigMap volume (kubelet's `..data` symlink swap is followed).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Watch the directory and reload on change.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Quiet period that folds a burst of changes into one rebuild.
    #[serde(default = "default_debounce", with = "humantime_serde")]
    pub debounce: Duration,
    /// What an empty policy set means: `deny_all` (default, logged) or `keep_last` (refuse it).
    #[serde(default)]
    pub on_empty: EmptyPolicy,
    /// Kubernetes API source (ConfigMaps selected by label).
    #[serde(default)]
    pub kubernetes: Option<KubernetesSource>,
    /// A candidate (shadow) policy set evaluated beside the live one; it never decides.
    #[serde(default)]
    pub candidate: Option<CandidateConfig>,
}

/// A complete candidate policy set, loaded and validated like the live one and evaluated on
/// (a sampled fraction of) the checks that reach Cedar, for comparison only. An empty candidate
/// set means deny-all, as for the live set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateConfig {
    /// A directory (or mounted ConfigMap volume) holding the candidate set.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// ConfigMaps selected through the API; the selector must differ from the live one.
    #[serde(default)]
    pub kubernetes: Option<KubernetesSource>,
    /// Watch the directory and reload on change.
    #[serde(default = "yes")]
    pub watch: bool,
    #[serde(default = "default_debounce", with = "humantime_serde")]
    pub debounce: Duration,
    /// Fraction of eligible checks also evaluated against the candidate (0.0 to 1.0).
    #[serde(default = "full_sample")]
    pub sample: f64,
    /// At most this many disagreement log lines per second; the rest are counted and the count
    /// is reported on the next line. 0 logs none.
    #[serde(default = "default_log_per_second")]
    pub log_per_second: u32,
}

fn full_sample() -> f64 {
    1.0
}

fn default_log_per_second() -> u32 {
    10
}

fn default_debounce() -> Duration {
    Duration::from_millis(250)
}

/// What to do when a source yields no policies at all.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EmptyPolicy {
    /// Swap in the empty set: every request is denied, and it is logged loudly.
    #[default]
    DenyAll,
    /// Refuse the empty set and keep the last good snapshot.
    KeepLast,
}

/// ConfigMaps watched through the Kubernetes API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSource {
    /// Namespaces to watch; empty means the pod's own namespace (`POD_NAMESPACE`).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Label selector for policy ConfigMaps (Kubernetes syntax: `a=b,c!=d,e in (f,g)`).
    #[serde(default = "default_selector")]
    pub selector: String,
    /// A kubeconfig file to use instead of in-cluster / default discovery (`Config::infer`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Post a Kubernetes Event on a ConfigMap whose update was refused (needs `create` on
    /// `events.k8s.io/events`).
    #[serde(default = "yes")]
    pub events: bool,
}

fn default_selector() -> String {
    "portcullis.dev/policy=true".into()
}

impl PolicyConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        validate_source("policy", self.dir.as_ref(), self.kubernetes.as_ref())?;
        if let Some(c) = &self.candidate {
            c.validate(self)?;
        }
        Ok(())
    }
}

impl CandidateConfig {
    fn validate(&self, live: &PolicyConfig) -> Result<(), ConfigError> {
        validate_source("policy.candidate", self.dir.as_ref(), self.kubernetes.as_ref())?;
        // The same source for both sets would compare the live set with itself, or worse, a
        // candidate edit would silently become live.
        if let (Some(c), Some(l)) = (&self.dir, &live.dir)
            && c == l
        {
            return Err(ConfigError::invalid("policy.candidate.dir", "must differ from `policy.dir`"));
        }
        if let (Some(c), Some(l)) = (&self.kubernetes, &live.kubernetes)
            && c.selector.trim() == l.selector.trim()
        {
            return Err(ConfigError::invalid(
                "policy.candidate.kubernetes.selector",
                "must differ from `policy.kubernetes.selector`",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample) {
            return Err(ConfigError::invalid("policy.candidate.sample", "must be between 0.0 and 1.0"));
        }
        Ok(())
    }
}

/// Exactly one of `dir` or `kubernetes`, and a usable Kubernetes source.
fn validate_source(field: &str, dir: Option<&PathBuf>, kube: Option<&KubernetesSource>) -> Result<(), ConfigError> {
    match (dir, kube) {
        (None, None) => Err(ConfigError::invalid(field, "set `dir` or `kubernetes`")),
        (Some(_), Some(_)) => Err(ConfigError::invalid(field, "set only one of `dir` or `kubernetes`")),
        (None, Some(k)) => {
            if k.selector.trim().is_empty() {
                // An empty selector would load every ConfigMap in the namespace as policy.
                return Err(ConfigError::invalid(format!("{field}.kubernetes.selector"), "must not be empty"));
            }
            if let Some(i) = k.namespaces.iter().position(|n| n.trim().is_empty()) {
                return Err(ConfigError::invalid(format!("{field}.kubernetes.namespaces[{i}]"), "must not be empty"));
            }
            Ok(())
        }
        (Some(_), None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {

    use crate::config::tests::parse;

    #[test]
    fn a_candidate_is_absent_by_default_and_defaults_to_sampling_everything() {
        assert!(parse("policy: {dir: x}\n").unwrap().policy.candidate.is_none());
        let c = parse("policy: {dir: x, candidate: {dir: y}}\n").unwrap().policy.candidate.unwrap();
        assert_eq!(c.sample, 1.0);
        assert!(c.watch);
        assert_eq!(c.log_per_second, 10);
        // Helm renders 1.0 as `1`: an integer is a fraction too.
        let c = parse("policy: {dir: x, candidate: {dir: y, sample: 1}}\n").unwrap().policy.candidate.unwrap();
        assert_eq!(c.sample, 1.0);
    }

    #[test]
    fn a_candidate_is_validated_like_the_live_source_and_named() {
        for (yaml, field) in [
            ("policy: {dir: x, candidate: {}}\n", "`policy.candidate`"),
            ("policy: {dir: x, candidate: {dir: y, kubernetes: {}}}\n", "`policy.candidate`"),
            ("policy: {dir: x, candidate: {kubernetes: {selector: ' '}}}\n", "policy.candidate.kubernetes.selector"),
            (
                "policy: {dir: x, candidate: {kubernetes: {namespaces: ['']}}}\n",
                "policy.candidate.kubernetes.namespaces[0]",
            ),
            ("policy: {dir: x, candidate: {dir: x}}\n", "policy.candidate.dir"),
            ("policy: {kubernetes: {}, candidate: {kubernetes: {}}}\n", "policy.candidate.kubernetes.selector"),
            ("policy: {dir: x, candidate: {dir: y, sample: 1.5}}\n", "policy.candidate.sample"),
            ("policy: {dir: x, candidate: {dir: y, sample: -0.1}}\n", "policy.candidate.sample"),
            ("policy: {dir: x, candidate: {dir: y, sample: .nan}}\n", "policy.candidate.sample"),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        assert!(parse("policy: {dir: x, candidate: {dir: y, sampel: 1}}\n").is_err(), "unknown fields refused");
        let c =
            parse("policy: {kubernetes: {}, candidate: {kubernetes: {selector: 'portcullis.dev/policy=candidate'}}}\n")
                .unwrap();
        assert_eq!(c.policy.candidate.unwrap().kubernetes.unwrap().selector, "portcullis.dev/policy=candidate");
    }
}
