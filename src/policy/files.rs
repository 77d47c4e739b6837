//! Policy files from a directory, which may be a mounted ConfigMap volume. Kubelet updates such a
//! volume by writing a new timestamped directory (`..2026_11_23_10_00_00.123`) and atomically
//! renaming a `..data_tmp` symlink over `..data`; the visible names are symlinks through
//! `..data`. We resolve `..data` ONCE per read and read every file from that one timestamped
//! directory: reading the visible names one by one could mix two updates if a swap lands
//! between two reads. A half-written update is never seen, and the whole set is re-read on any
//! change. Only changes count (our own reads are not), and bursts of them are debounced by
//! [`crate::watch`], which also re-reads every [`watch::DIR_POLL_EVERY`] in case events were dropped
//! (an unchanged directory is then an `unchanged` reload).
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::snapshot::{DocKind, LoadError, PolicyDocument};
use super::store::PolicyStore;
use super::target::StoreTarget;
use crate::watch;

/// Largest single policy file accepted.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads every policy document in `dir` (not recursive; hidden names such as `..data` skipped).
/// For a kubelet-managed volume the files come from the one directory `..data` points to.
pub fn read_dir(dir: &Path) -> Result<Vec<PolicyDocument>, Vec<LoadError>> {
    watch::read_volume(dir, read_plain_dir, |e| vec![LoadError::whole(&dir.display().to_string(), e)])
}

fn read_plain_dir(dir: &Path) -> Result<Vec<PolicyDocument>, Vec<LoadError>> {
    let origin = dir.display().to_string();
    let entries =
        std::fs::read_dir(dir).map_err(|e| vec![LoadError::whole(&origin, format!("cannot read directory: {e}"))])?;
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Some(kind) = DocKind::from_name(&name) else { continue };
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                errors.push(LoadError::whole(&name, format!("larger than {MAX_FILE_BYTES} bytes")));
                continue;
            }
            Ok(m) if !m.is_file() => continue,
            Err(e) => {
                errors.push(LoadError::whole(&name, format!("cannot stat: {e}")));
                continue;
            }
            Ok(_) => {}
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => docs.push(PolicyDocument { origin: name, kind, text }),
            Err(e) => errors.push(LoadError::whole(&name, format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() {
        docs.sort_by(|a, b| a.origin.cmp(&b.origin));
        Ok(docs)
    } else {
        Err(errors)
    }
}

/// Loads `dir` once into the store.
pub fn load_into(dir: &Path, store: &PolicyStore) -> Result<(), Vec<LoadError>> {
    let source = source_name(dir);
    let docs = read_dir(dir).inspect_err(|errs| {
        for e in errs {
            tracing::error!(set = store.set(), %source, error = %e, "policy directory unreadable; last good snapshot stays");
        }
        store.record_unreadable(errs);
    })?;
    store.apply(&docs, &source).map(|_| ())
}

/// Watches `dir` and reloads on change until `shutdown` flips. Returns the task's handle.
/// Bursts are debounced by `debounce`, for at most [`watch::MAX_WAIT_FACTOR`] of it.
pub fn spawn_watch(
    dir: PathBuf,
    store: Arc<PolicyStore>,
    debounce: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (watcher, events) = watch::dir_events(&dir)?;
    let source = DirSource { dir: dir.clone(), store: store.clone(), _watcher: watcher };
    let target = Arc::new(StoreTarget { store, source: source_name(&dir) });
    let timing = watch::Timing::from_quiet(debounce).with_poll(watch::DIR_POLL_EVERY);
    Ok(tokio::spawn(watch::run(source, target, events, timing, shutdown)))
}

/// The store's `source` string for a directory.
fn source_name(dir: &Path) -> String {
    format!("dir:{}", dir.display())
}

/// The directory as a [`watch::Source`]; the notify watcher lives (and watches) as long as it.
struct DirSource {
    dir: PathBuf,
    /// Told when the directory cannot be read, so the failure is counted and shown.
    store: Arc<PolicyStore>,
    _watcher: notify::RecommendedWatcher,
}

impl watch::Source for DirSource {
    type Event = ();
    type Target = StoreTarget;

    fn observe(&mut self, _: ()) -> bool {
        true
    }

    fn collect(&mut self) -> impl FnOnce() -> Option<Vec<PolicyDocument>> + Send + 'static {
        let (dir, store) = (self.dir.clone(), self.store.clone());
        move || read_logged(&dir, &store)
    }

    /// The store logs, counts and records the outcome itself.
    fn report(&mut self, _: watch::Applied<StoreTarget>) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Reads `dir`, logging and recording why not: an unreadable directory keeps the last good
/// snapshot, with the error in the store's status and metrics.
fn read_logged(dir: &Path, store: &PolicyStore) -> Option<Vec<PolicyDocument>> {
    read_dir(dir)
        .inspect_err(|errs| {
            let source = source_name(dir);
            for e in errs {
                tracing::error!(%source, error = %e, "policy directory unreadable; last good snapshot stays");
            }
            store.record_unreadable(errs);
        })
        .ok()
}
