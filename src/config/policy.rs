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
        match (&self.dir, &self.kubernetes) {
            (None, None) => Err(ConfigError::invalid("policy", "set `dir` or `kubernetes`")),
            (Some(_), Some(_)) => Err(ConfigError::invalid("policy", "set only one of `dir` or `kubernetes`")),
            (None, Some(k)) => {
                if k.selector.trim().is_empty() {
                    // An empty selector would load every ConfigMap in the namespace as policy.
                    return Err(ConfigError::invalid("policy.kubernetes.selector", "must not be empty"));
                }
                if let Some(i) = k.namespaces.iter().position(|n| n.trim().is_empty()) {
                    return Err(ConfigError::invalid(
                        format!("policy.kubernetes.namespaces[{i}]"),
                        "must not be empty",
                    ));
                }
                Ok(())
            }
            (Some(_), None) => Ok(()),
        }
    }
}
