//! Policies from Kubernetes ConfigMaps selected by a label selector, watched through the API
//! server (kube-runtime `watcher`), split as linkerd's policy controller is: [`index`] is the pure
//! in-memory view that watch events feed (no client, no runtime: tested with fixtures), and
//! [`source`] is the runtime (watch streams, the [`crate::watch`] reload loop, Kubernetes
//! Events). After a quiet period the whole document set is rebuilt from the index and handed to
//! [`PolicyStore::apply`](super::PolicyStore::apply), which validates it before swapping.
//! Nothing is applied before every namespace has completed its first list, so readiness means
//! "the complete set was valid". A refused set keeps the last good snapshot and is reported as
//! a Kubernetes Event on the offending ConfigMap(s).
use std::path::Path;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::KubernetesSource;

pub mod index;
pub mod source;

pub use index::{Index, configmap_of, origin};
pub use source::KubeSource;

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no Kubernetes client configuration (in-cluster or kubeconfig): {0}")]
    Infer(String),
    #[error("building the Kubernetes client: {0}")]
    Client(String),
}

/// A kube client from `kubeconfig` if set, else in-cluster service account / `$KUBECONFIG`.
pub async fn client(src: &KubernetesSource) -> Result<Client, KubeSourceError> {
    let config = match &src.kubeconfig {
        Some(path) => from_kubeconfig_file(path).await?,
        None => kube::Config::infer().await.map_err(|e| KubeSourceError::Infer(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| KubeSourceError::Client(e.to_string()))
}

async fn from_kubeconfig_file(path: &Path) -> Result<kube::Config, KubeSourceError> {
    let err = |e: &dyn std::fmt::Display| KubeSourceError::Kubeconfig {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| err(&e))
}

/// Namespaces to watch: the configured ones, else `POD_NAMESPACE`, else the client's default
/// namespace (the service account's namespace in-cluster, the context's namespace otherwise).
pub fn namespaces(src: &KubernetesSource, client: &Client) -> Vec<String> {
    let mut ns: Vec<String> = src.namespaces.iter().map(|n| n.trim().to_owned()).collect();
    if ns.is_empty() {
        ns.push(
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| client.default_namespace().to_owned()),
        );
    }
    ns.sort();
    ns.dedup();
    ns
}

/// The store's `source` string: `kubernetes:<ns,...>/<selector>`.
pub fn source_name(namespaces: &[String], selector: &str) -> String {
    format!("kubernetes:{}/{}", namespaces.join(","), selector)
}
