//! The live set of API keys from Secrets, swapped atomically as a whole; a refused update keeps
//! the last good set and stays visible (log, metric, status).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::keyset::{KeyError, KeySet};
use crate::watch;

/// What `/policy`-style diagnostics and tests read about key loading.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct KeyStatus {
    pub version: Option<String>,
    pub keys: usize,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Holds the live key set.
pub struct KeyStore {
    current: ArcSwap<KeySet>,
    status: Mutex<KeyStatus>,
    /// Digests of the inline (config) keys and their field names: a Secret may not repeat one.
    inline: HashMap<[u8; 32], String>,
    reloads: Family<ResultLabel, Counter>,
    keys: Gauge,
}

impl KeyStore {
    pub fn new(inline: HashMap<[u8; 32], String>, registry: &mut Registry) -> Self {
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register("reloads", "API key set reloads by result (ok, rejected, unchanged)", reloads.clone());
        let keys = Gauge::default();
        registry.register("keys", "API keys loaded from Secrets", keys.clone());
        Self { current: ArcSwap::from_pointee(KeySet::default()), status: Mutex::default(), inline, reloads, keys }
    }

    pub fn load(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    pub fn status(&self) -> KeyStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// True once a key set has been applied (an empty one counts): until the Kubernetes source
    /// has listed every namespace, a valid key would be refused, so the sidecar is not ready.
    pub fn is_loaded(&self) -> bool {
        self.status.lock().map(|s| s.version.is_some()).unwrap_or(false)
    }

    /// Validates a complete entry set and swaps it in, or refuses it and keeps the last good.
    pub fn apply(&self, docs: &[(String, String)], source: &str) -> Result<(), Vec<KeyError>> {
        self.apply_checked(docs, Vec::new(), source)
    }

    /// [`KeyStore::apply`] with problems the source found itself (e.g. a Secret value that is
    /// not text): any refuses the set, listed with the entries' own errors.
    pub(crate) fn apply_checked(
        &self,
        docs: &[(String, String)],
        mut found: Vec<KeyError>,
        source: &str,
    ) -> Result<(), Vec<KeyError>> {
        let built = KeySet::build(docs).and_then(|set| {
            let clashes: Vec<KeyError> = set
                .by_digest
                .iter()
                .filter_map(|(d, e)| {
                    self.inline
                        .get(d)
                        .map(|field| KeyError::Duplicate { first: field.clone(), second: e.origin.clone() })
                })
                .collect();
            if clashes.is_empty() { Ok(set) } else { Err(clashes) }
        });
        let built = match built {
            Ok(set) if found.is_empty() => Ok(set),
            Ok(_) => Err(found),
            Err(errs) => {
                found.extend(errs);
                Err(found)
            }
        };
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match built {
            Ok(set) => {
                let version = set.version();
                if status.version.as_deref() == Some(version.as_str()) && status.last_error.is_none() {
                    self.reloads.get_or_create(&ResultLabel { result: "unchanged" }).inc();
                    return Ok(());
                }
                tracing::info!(%source, keys = set.len(), %version, "API key set loaded");
                self.keys.set(set.len() as i64);
                *status = KeyStatus { version: Some(version), keys: set.len(), last_error: None };
                self.current.store(Arc::new(set));
                self.reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
                Ok(())
            }
            Err(errs) => {
                let message = errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                tracing::error!(%source, error = %message, "API key set refused; last good set stays");
                status.last_error = Some(message);
                self.reloads.get_or_create(&ResultLabel { result: "rejected" }).inc();
                Err(errs)
            }
        }
    }
}

/// The store as a [`watch::Target`] for a named source.
pub(crate) struct StoreTarget {
    pub(crate) store: Arc<KeyStore>,
    pub(crate) source: String,
}

impl watch::Target for StoreTarget {
    type Candidate = Vec<(String, String)>;
    type Outcome = ();
    type Error = Vec<KeyError>;

    fn apply(&self, docs: Vec<(String, String)>) -> Result<(), Vec<KeyError>> {
        self.store.apply(&docs, &self.source)
    }
}
