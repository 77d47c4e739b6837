//! Policies: immutable validated snapshots (`snapshot`), the one atomically swapped current
//! snapshot (`store`), and the sources that feed it (`files`).
pub mod files;
pub mod snapshot;
pub mod store;

pub use snapshot::{DocKind, LoadError, PolicyDocument, PolicySnapshot};
pub use store::{PolicyStore, StoreStatus};
