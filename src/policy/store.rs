//! The one piece of shared mutable state: the current [`PolicySnapshot`], swapped atomically.
//! Sources hand whole document sets to [`PolicyStore::apply`]; a set that fails to build is
//! never swapped in, and the failure stays visible (log, metric, status, readiness detail).
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::snapshot::{DocKind, LoadError, PolicyDocument, PolicySnapshot, format_errors, version_of};
use crate::config::EmptyPolicy;

/// What the admin endpoint shows about policy loading.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStatus {
    pub version: Option<String>,
    pub source: Option<String>,
    pub policy_count: usize,
    pub loaded_at_unix: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at_unix: Option<u64>,
    pub deny_all: bool,
}

/// Result of applying a document set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A new snapshot is live.
    Swapped { version: String },
    /// Same content as the live snapshot; nothing changed.
    Unchanged,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// Holds the live snapshot (or, for a candidate store, the candidate set's snapshot).
pub struct PolicyStore {
    /// `live` or `candidate`: named in every log line about this store.
    set: &'static str,
    current: ArcSwapOption<PolicySnapshot>,
    status: Mutex<StoreStatus>,
    on_empty: EmptyPolicy,
    reloads: Family<ResultLabel, Counter>,
    info: Family<VersionLabel, Gauge>,
    policies: Gauge,
}

impl PolicyStore {
    pub fn new(on_empty: EmptyPolicy, registry: &mut Registry) -> Self {
        Self::named("live", on_empty, registry)
    }

    /// The store of a candidate (shadow) set: same loading, validation and reporting; an empty
    /// candidate set is deny-all, as for the live set. Register it under its own prefix.
    pub fn candidate(registry: &mut Registry) -> Self {
        Self::named("candidate", EmptyPolicy::DenyAll, registry)
    }

    fn named(set: &'static str, on_empty: EmptyPolicy, registry: &mut Registry) -> Self {
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register("reloads", "Policy reloads by result (ok, rejected, unchanged, unreadable)", reloads.clone());
        let info = Family::<VersionLabel, Gauge>::default();
        registry.register("snapshot_info", format!("The {set} policy snapshot version (value 1)"), info.clone());
        let policies = Gauge::default();
        registry.register("snapshot_policies", format!("Policies in the {set} snapshot"), policies.clone());
        Self {
            set,
            current: ArcSwapOption::empty(),
            status: Mutex::new(StoreStatus::default()),
            on_empty,
            reloads,
            info,
            policies,
        }
    }

    /// `live` or `candidate`.
    pub fn set(&self) -> &'static str {
        self.set
    }

    /// The live snapshot; a request holds it for its whole evaluation.
    pub fn load(&self) -> Option<Arc<PolicySnapshot>> {
        self.current.load_full()
    }

    /// True once a snapshot is live.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn status(&self) -> StoreStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Builds a snapshot from a complete document set and swaps it in, or keeps the last good one.
    pub fn apply(&self, docs: &[PolicyDocument], source: &str) -> Result<ApplyOutcome, Vec<LoadError>> {
        if let Some(cur) = self.current.load().as_ref()
            && *cur.version == *version_of(docs)
            && cur.source == source
        {
            self.reloads.get_or_create(&ResultLabel { result: "unchanged" }).inc();
            // The source is back to the live content (e.g. a broken file was reverted): the
            // last error no longer describes it.
            if let Ok(mut st) = self.status.lock() {
                st.last_error = None;
            }
            return Ok(ApplyOutcome::Unchanged);
        }
        // No schema and no policies at all (every ConfigMap or file deleted): that is an empty
        // set, not a broken one, so `on_empty` decides; it is never allow-all.
        let nothing = !docs.iter().any(|d| matches!(d.kind, DocKind::Schema | DocKind::Policies));
        let built = if nothing { PolicySnapshot::empty(docs, source) } else { PolicySnapshot::build(docs, source) };
        let built = built.and_then(|s| {
            if s.policy_count == 0 && self.on_empty == EmptyPolicy::KeepLast && self.is_ready() {
                Err(vec![LoadError::whole(
                    source,
                    "the new policy set is empty; refused (policy.on_empty = keep_last)",
                )])
            } else {
                Ok(s)
            }
        });
        let set = self.set;
        match built {
            Ok(snap) => {
                let version = snap.version.to_string();
                if snap.policy_count == 0 {
                    tracing::warn!(set, %source, %version, "policy set is EMPTY: every request will be denied (deny-all)");
                }
                for w in &snap.warnings {
                    tracing::warn!(set, %source, warning = %w, "policy validation warning");
                }
                tracing::info!(set, %source, %version, policies = snap.policy_count, "policy snapshot swapped in");
                self.record_ok(&snap);
                self.current.store(Some(Arc::new(snap)));
                Ok(ApplyOutcome::Swapped { version })
            }
            Err(errs) => {
                let kept = self.current.load().as_ref().map(|s| s.version.clone());
                for e in &errs {
                    tracing::error!(set, %source, error = %e, kept_version = ?kept, "policy reload rejected; last good snapshot stays");
                }
                self.reloads.get_or_create(&ResultLabel { result: "rejected" }).inc();
                if let Ok(mut st) = self.status.lock() {
                    st.last_error = Some(format_errors(&errs));
                    st.last_error_at_unix = Some(unix(SystemTime::now()));
                }
                Err(errs)
            }
        }
    }

    /// A source could not even be read (e.g. its directory deleted or unreadable): nothing is
    /// applied, the last good snapshot stays, and the failure is counted and shown in the status.
    pub fn record_unreadable(&self, errs: &[LoadError]) {
        self.reloads.get_or_create(&ResultLabel { result: "unreadable" }).inc();
        if let Ok(mut st) = self.status.lock() {
            st.last_error = Some(format_errors(errs));
            st.last_error_at_unix = Some(unix(SystemTime::now()));
        }
    }

    fn record_ok(&self, snap: &PolicySnapshot) {
        self.reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
        self.info.clear();
        self.info.get_or_create(&VersionLabel { version: snap.version.to_string() }).set(1);
        self.policies.set(snap.policy_count as i64);
        if let Ok(mut st) = self.status.lock() {
            st.version = Some(snap.version.to_string());
            st.source = Some(snap.source.clone());
            st.policy_count = snap.policy_count;
            st.loaded_at_unix = Some(unix(snap.loaded_at));
            st.deny_all = snap.policy_count == 0;
            st.last_error = None;
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
