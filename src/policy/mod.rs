//! Policies: immutable validated snapshots (`snapshot`), the one atomically swapped current
//! snapshot (`store`), and the sources that feed it (`files`: a directory or mounted ConfigMap
//! volume; `kube`: ConfigMaps through the Kubernetes API), both run by [`crate::watch`] into
//! the store (`target`).
pub mod files;
pub mod kube;
pub mod snapshot;
pub mod store;
pub mod target;

pub use snapshot::{DocKind, LoadError, PolicyDocument, PolicySnapshot};
pub use store::{PolicyStore, StoreStatus};
