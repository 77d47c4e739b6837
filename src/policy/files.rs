//! Policy files from a directory, which may be a mounted ConfigMap volume. Kubelet updates such a
//! volume by writing a new timestamped directory (`..2026_11_23_10_00_00.123`) and atomically
//! renaming a `..data_tmp` symlink over `..data`; the visible names are symlinks through
//! `..data`. We resolve `..data` ONCE per read and read every file from that one timestamped
//! directory: reading the visible names one by one could mix two updates if a swap lands
//! between two reads. A half-written update is never seen, and the whole set is re-read on any
//! event. Bursts of events are debounced.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::snapshot::{DocKind, LoadError, PolicyDocument};
use super::store::PolicyStore;

/// Largest single policy file accepted.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Re-read even without events, in case the platform drops some (e.g. some overlay filesystems).
const POLL_EVERY: Duration = Duration::from_secs(30);

/// Kubelet's symlink to the current timestamped directory of a ConfigMap volume.
const KUBELET_DATA: &str = "..data";
/// A swap can remove the directory we resolved while we read it: resolve again this often.
const SWAP_RETRIES: usize = 5;

/// Reads every policy document in `dir` (not recursive; hidden names such as `..data` skipped).
/// For a kubelet-managed volume the files come from the one directory `..data` points to.
pub fn read_dir(dir: &Path) -> Result<Vec<PolicyDocument>, Vec<LoadError>> {
    let data = dir.join(KUBELET_DATA);
    if std::fs::symlink_metadata(&data).is_ok_and(|m| m.file_type().is_symlink()) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Resolve `..data` once; everything below reads from its target.
            let target = std::fs::canonicalize(&data).map_err(|e| {
                vec![LoadError::whole(&dir.display().to_string(), format!("cannot resolve {KUBELET_DATA}: {e}"))]
            })?;
            let result = read_plain_dir(&target);
            // Kubelet removes the old directory only after the swap: if `..data` still points
            // where it did, nothing we read was being deleted. Otherwise the read may be partial
            // (some files already unlinked): read the new directory instead.
            if std::fs::canonicalize(&data).ok().as_ref() == Some(&target) {
                return result;
            }
            if attempt >= SWAP_RETRIES {
                return Err(vec![LoadError::whole(
                    &dir.display().to_string(),
                    format!("cannot get a stable read: {KUBELET_DATA} kept changing"),
                )]);
            }
        }
    }
    read_plain_dir(dir)
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
    let source = format!("dir:{}", dir.display());
    let docs = read_dir(dir).inspect_err(|errs| {
        for e in errs {
            tracing::error!(%source, error = %e, "policy directory unreadable; last good snapshot stays");
        }
    })?;
    store.apply(&docs, &source).map(|_| ())
}

/// Watches `dir` and reloads on change until `shutdown` flips. Returns the task's handle.
pub fn spawn_watch(
    dir: PathBuf,
    store: Arc<PolicyStore>,
    debounce: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            // A full channel already means "reload pending": coalesce.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(tokio::spawn(async move {
        let _watcher = watcher; // dropped (and unwatched) when the task ends
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                ev = rx.recv() => {
                    if ev.is_none() { break; }
                    // Debounce: wait for quiet, folding further events into this reload.
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(debounce) => break,
                            more = rx.recv() => if more.is_none() { break },
                        }
                    }
                }
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
            let dir = dir.clone();
            let store = store.clone();
            // File reads and Cedar validation are blocking work.
            let _ = tokio::task::spawn_blocking(move || load_into(&dir, &store)).await;
        }
    }))
}
