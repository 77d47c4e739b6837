//! Policies from Kubernetes ConfigMaps selected by a label selector, watched through the API
//! server (kube-runtime `watcher`), split as linkerd's policy controller is: [`index`] is the pure
//! in-memory view that watch events feed (no client, no runtime: tested with fixtures), and
//! [`source`] is the runtime (watch streams, the [`crate::watch`] reload loop, Kubernetes
//! Events). After a quiet period the whole document set is rebuilt from the index and handed to
//! [`PolicyStore::apply`](super::PolicyStore::apply), which validates it before swapping.
//! Nothing is applied before every namespace has completed its first list, so readiness means
//! "the complete set was valid". A refused set keeps the last good snapshot and is reported as
//! a Kubernetes Event on the offending ConfigMap(s).
use kube::Client;

use crate::config::KubernetesSource;

pub mod index;
pub mod source;

pub use crate::kubeapi::KubeSourceError;
pub use index::{Index, configmap_of, origin};
pub use source::KubeSource;

/// A kube client from `kubeconfig` if set, else in-cluster service account / `$KUBECONFIG`.
pub async fn client(src: &KubernetesSource) -> Result<Client, KubeSourceError> {
    crate::kubeapi::client(src.kubeconfig.as_deref()).await
}

/// Namespaces to watch: the configured ones, else `POD_NAMESPACE`, else the client's default
/// namespace (the service account's namespace in-cluster, the context's namespace otherwise).
pub fn namespaces(src: &KubernetesSource, client: &Client) -> Vec<String> {
    crate::kubeapi::namespaces(&src.namespaces, client)
}

/// The store's `source` string: `kubernetes:<ns,...>/<selector>`.
pub fn source_name(namespaces: &[String], selector: &str) -> String {
    format!("kubernetes:{}/{}", namespaces.join(","), selector)
}
