//! The policy store as a [`watch::Target`]: a complete document set from one source is built,
//! validated and swapped in, or refused with the last good snapshot kept.
use std::sync::Arc;

use super::snapshot::{LoadError, PolicyDocument};
use super::store::{ApplyOutcome, PolicyStore};
use crate::watch;

/// Applies document sets from the source named `source` to `store`.
pub struct StoreTarget {
    pub store: Arc<PolicyStore>,
    /// The store's `source` string (`dir:/etc/portcullis/policies`, `kubernetes:ns/selector`).
    pub source: String,
}

impl watch::Target for StoreTarget {
    type Candidate = Vec<PolicyDocument>;
    type Outcome = ApplyOutcome;
    type Error = Vec<LoadError>;

    fn apply(&self, docs: Vec<PolicyDocument>) -> Result<ApplyOutcome, Vec<LoadError>> {
        self.store.apply(&docs, &self.source)
    }
}
