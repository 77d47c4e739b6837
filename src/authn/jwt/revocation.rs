//! Token deny-lists: revoked `jti` values and per-subject "revoked before" times, read from every
//! file of a watched directory (a mounted ConfigMap works: its `..data` swap is read as one set),
//! validated as a whole and swapped in atomically; a refused update keeps the last good set.
//! Checked on every request, verified-token cache hits included.
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::watch;

/// Most files read from the deny-list directory.
const MAX_FILES: usize = 64;
/// Largest deny-list file read, in bytes.
const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// A point in time: seconds since the epoch, or an RFC 3339 string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Moment {
    Unix(u64),
    Text(String),
}

impl Moment {
    fn secs(&self, field: &str) -> Result<u64, String> {
        match self {
            Moment::Unix(n) => Ok(*n),
            Moment::Text(t) => humantime::parse_rfc3339_weak(t)
                .ok()
                .and_then(|st| st.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .ok_or_else(|| format!("{field}: `{t}` is neither seconds since the epoch nor an RFC 3339 time")),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyFile {
    #[serde(default)]
    jti: Vec<JtiEntry>,
    #[serde(default)]
    subjects: Vec<SubjectEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JtiEntry {
    id: String,
    /// After this time the entry may be dropped (typically the token's `exp`).
    #[serde(default)]
    forget_after: Option<Moment>,
    /// Only tokens of this issuer; absent: any issuer's token with this `jti`.
    #[serde(default)]
    issuer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectEntry {
    issuer: String,
    subject: String,
    /// Every token of this subject with `iat` before this time is refused.
    revoked_before: Moment,
}

/// One validated deny-list.
#[derive(Debug, Default)]
pub(super) struct DenyList {
    /// `(issuer or "", jti)`.
    jti: HashSet<(String, String)>,
    /// `(issuer, subject)` → revoked before (seconds since the epoch).
    subjects: HashMap<(String, String), u64>,
}

impl DenyList {
    fn len(&self) -> usize {
        self.jti.len() + self.subjects.len()
    }

    /// Builds one list from every `(name, text)` document; entries past `forget_after` at `now`
    /// are dropped before the bound is applied.
    pub(super) fn build(docs: &[(String, String)], now: u64, max_entries: usize) -> Result<Self, String> {
        let mut out = DenyList::default();
        for (name, text) in docs {
            if text.trim().is_empty() {
                continue;
            }
            let file: DenyFile = serde_saphyr::from_str(text).map_err(|e| format!("{name}: {e}"))?;
            for (i, e) in file.jti.iter().enumerate() {
                let f = format!("{name}: jti[{i}]");
                if e.id.is_empty() {
                    return Err(format!("{f}.id: must not be empty"));
                }
                if e.issuer.as_deref() == Some("") {
                    return Err(format!("{f}.issuer: must not be empty (omit it to match any issuer)"));
                }
                if let Some(t) = &e.forget_after
                    && t.secs(&format!("{f}.forget_after"))? < now
                {
                    continue;
                }
                out.jti.insert((e.issuer.clone().unwrap_or_default(), e.id.clone()));
            }
            for (i, e) in file.subjects.iter().enumerate() {
                let f = format!("{name}: subjects[{i}]");
                if e.issuer.is_empty() || e.subject.is_empty() {
                    return Err(format!("{f}: `issuer` and `subject` must not be empty"));
                }
                let t = e.revoked_before.secs(&format!("{f}.revoked_before"))?;
                let slot = out.subjects.entry((e.issuer.clone(), e.subject.clone())).or_insert(0);
                *slot = (*slot).max(t);
            }
            if out.len() > max_entries {
                return Err(format!(
                    "more than {max_entries} entries (`authn.revocation.max_entries`); the whole update is refused"
                ));
            }
        }
        Ok(out)
    }

    /// Whether a token of `issuer`/`subject` with this `jti` and `iat` is revoked. A token without
    /// `iat` whose subject has a "revoked before" entry is revoked: it cannot show it is newer.
    pub(super) fn revokes(&self, issuer: &str, subject: &str, jti: Option<&str>, iat: Option<u64>) -> bool {
        if let Some(j) = jti
            && (self.jti.contains(&(String::new(), j.to_owned()))
                || self.jti.contains(&(issuer.to_owned(), j.to_owned())))
        {
            return true;
        }
        match self.subjects.get(&(issuer.to_owned(), subject.to_owned())) {
            Some(before) => iat.is_none_or(|iat| iat < *before),
            None => false,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The live deny-list.
pub struct DenyListStore {
    current: ArcSwap<DenyList>,
    max_entries: usize,
    last_docs: std::sync::Mutex<Option<Vec<(String, String)>>>,
    reloads: Family<ResultLabel, Counter>,
    entries: Gauge,
}

impl DenyListStore {
    pub(super) fn new(max_entries: usize, registry: &mut Registry) -> Self {
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "revocation_reloads",
            "Token deny-list reloads by result (ok, unchanged, rejected)",
            reloads.clone(),
        );
        let entries = Gauge::default();
        registry.register("revocation_entries", "Entries in the live token deny-list", entries.clone());
        Self {
            current: ArcSwap::from_pointee(DenyList::default()),
            max_entries,
            last_docs: std::sync::Mutex::new(None),
            reloads,
            entries,
        }
    }

    pub(super) fn load(&self) -> Arc<DenyList> {
        self.current.load_full()
    }

    /// Validates a complete set of documents and swaps it in, or refuses it (last good kept).
    pub fn apply(&self, docs: Vec<(String, String)>, source: &str) -> Result<(), String> {
        match DenyList::build(&docs, unix_now(), self.max_entries) {
            Ok(list) => {
                let mut last = self.last_docs.lock().unwrap_or_else(|p| p.into_inner());
                let unchanged = last.as_ref() == Some(&docs);
                // Rebuilt even when unchanged, so entries past `forget_after` are dropped.
                self.entries.set(list.len() as i64);
                if !unchanged {
                    tracing::info!(%source, entries = list.len(), "token deny-list loaded");
                }
                self.current.store(Arc::new(list));
                *last = Some(docs);
                self.reloads.get_or_create(&ResultLabel { result: if unchanged { "unchanged" } else { "ok" } }).inc();
                Ok(())
            }
            Err(e) => {
                tracing::error!(%source, error = %e, "token deny-list refused; last good list stays");
                self.reloads.get_or_create(&ResultLabel { result: "rejected" }).inc();
                // A later good load of the same text as before must count as a change again.
                if let Ok(mut last) = self.last_docs.lock() {
                    *last = None;
                }
                Err(e)
            }
        }
    }

    /// Loads `dir` once (at start: an error refuses to start).
    pub fn load_dir(&self, dir: &Path) -> Result<(), String> {
        let docs = read_dir(dir)?;
        self.apply(docs, &dir.display().to_string())
    }
}

/// Every non-hidden regular file of `dir` (following kubelet's `..data`), in name order, bounded.
fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, String> {
    watch::read_volume(dir, read_plain_dir, |e| format!("{}: {e}", dir.display()))
}

fn read_plain_dir(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        paths.push(entry.path());
        if paths.len() > MAX_FILES {
            return Err(format!("{}: more than {MAX_FILES} files", dir.display()));
        }
    }
    paths.sort();
    let mut docs = Vec::with_capacity(paths.len());
    for p in paths {
        let mut text = String::new();
        std::fs::File::open(&p)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("{}: larger than {MAX_FILE_BYTES} bytes", p.display()));
        }
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        docs.push((name, text));
    }
    Ok(docs)
}

/// Watches `dir` and reloads the deny-list on change (and every [`watch::DIR_POLL_EVERY`], which
/// also forgets expired entries) until `shutdown` flips.
pub fn spawn_watch(
    dir: PathBuf,
    store: Arc<DenyListStore>,
    debounce: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (watcher, events) = watch::dir_events(&dir)?;
    let target = Arc::new(Target { store, source: dir.display().to_string() });
    let source = DirSource { dir, _watcher: watcher };
    let timing = watch::Timing::from_quiet(debounce).with_poll(watch::DIR_POLL_EVERY);
    Ok(tokio::spawn(watch::run(source, target, events, timing, shutdown)))
}

struct Target {
    store: Arc<DenyListStore>,
    source: String,
}

impl watch::Target for Target {
    type Candidate = Vec<(String, String)>;
    type Outcome = ();
    type Error = String;

    fn apply(&self, docs: Vec<(String, String)>) -> Result<(), String> {
        self.store.apply(docs, &self.source)
    }
}

struct DirSource {
    dir: PathBuf,
    _watcher: notify::RecommendedWatcher,
}

impl watch::Source for DirSource {
    type Event = ();
    type Target = Target;

    fn observe(&mut self, _: ()) -> bool {
        true
    }

    fn collect(&mut self) -> impl FnOnce() -> Option<Vec<(String, String)>> + Send + 'static {
        let dir = self.dir.clone();
        let store_err =
            move |e: &String| tracing::error!(error = %e, "token deny-list unreadable; last good list stays");
        move || read_dir(&dir).inspect_err(store_err).ok()
    }

    /// The store logs and counts the outcome itself.
    fn report(&mut self, _: watch::Applied<Target>) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Vec<(String, String)> {
        vec![("deny.yaml".into(), text.into())]
    }

    #[test]
    fn jti_and_subject_entries_revoke_and_forgotten_ones_are_dropped() {
        let l = DenyList::build(
            &doc("jti:
  - {id: a}
  - {id: b, forget_after: 500}
  - {id: c, forget_after: 2000, issuer: https://i}
subjects:
  - {issuer: https://i, subject: alice, revoked_before: 1500}
"),
            1000,
            10,
        )
        .expect("valid");
        assert!(l.revokes("https://x", "s", Some("a"), Some(1)), "a jti without issuer matches every issuer");
        assert!(!l.revokes("https://x", "s", Some("b"), Some(1)), "past forget_after: dropped");
        assert!(l.revokes("https://i", "s", Some("c"), Some(1)));
        assert!(!l.revokes("https://x", "s", Some("c"), Some(1)), "jti scoped to another issuer");
        assert!(l.revokes("https://i", "alice", None, Some(1499)));
        assert!(!l.revokes("https://i", "alice", None, Some(1500)), "issued at T or later stays valid");
        assert!(l.revokes("https://i", "alice", None, None), "no iat: cannot prove it is newer");
        assert!(!l.revokes("https://x", "alice", None, Some(1)), "another issuer's alice");
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn rfc3339_times_are_read() {
        let l =
            DenyList::build(&doc("subjects: [{issuer: i, subject: s, revoked_before: '2026-01-01T00:00:00Z'}]"), 0, 10)
                .expect("valid");
        assert!(l.revokes("i", "s", None, Some(1_767_225_599)));
        assert!(!l.revokes("i", "s", None, Some(1_767_225_600)));
    }

    #[test]
    fn bad_documents_and_too_many_entries_are_refused() {
        for bad in [
            "jti: [{id: ''}]",
            "jti: [{id: a, extra: 1}]",
            "subjects: [{issuer: i, subject: s}]",
            "subjects: [{issuer: i, subject: s, revoked_before: yesterday}]",
            "subjects: [{issuer: '', subject: s, revoked_before: 1}]",
            "jti: [{id: a, issuer: ''}]",
            "nonsense: true",
            "jti: {id: a}",
        ] {
            assert!(DenyList::build(&doc(bad), 0, 10).is_err(), "{bad}");
        }
        let err = DenyList::build(&doc("jti: [{id: a}, {id: b}, {id: c}]"), 0, 2).unwrap_err();
        assert!(err.contains("authn.revocation.max_entries"), "{err}");
        // Forgotten entries do not count against the bound.
        assert!(
            DenyList::build(&doc("jti: [{id: a, forget_after: 1}, {id: b, forget_after: 1}, {id: c}]"), 5, 1).is_ok()
        );
    }

    #[test]
    fn a_refused_update_keeps_the_last_good_list() {
        let store = DenyListStore::new(10, &mut Registry::default());
        store.apply(doc("jti: [{id: a}]"), "t").expect("good");
        assert!(store.apply(doc("jti: [{id: ''}]"), "t").is_err());
        assert!(store.load().revokes("i", "s", Some("a"), None), "last good list still answers");
    }
}
