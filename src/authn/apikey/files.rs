//! API keys from a mounted Secret volume: every data key of the Secret is a file holding one
//! entry document. The kubelet swaps the whole volume at once (`..data` symlink), so the files
//! are read as one set; the directory is watched and reloaded through the one reload loop.
use std::future::Future;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::keyset::{MAX_ENTRIES, MAX_ENTRY_BYTES};
use super::store::{KeyStore, StoreTarget};
use crate::watch;

/// Reads every entry file of `dir` (hidden names, such as the kubelet's `..data`, skipped), in
/// name order, each bounded in size.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, String> {
    watch::read_volume(dir, read_plain_dir, |e| format!("{}: {e}", dir.display()))
}

fn read_plain_dir(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Follows symlinks: Secret volume files are links into `..data`.
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        paths.push(entry.path());
        if paths.len() > MAX_ENTRIES {
            return Err(format!("{}: more than {MAX_ENTRIES} entries", dir.display()));
        }
    }
    paths.sort();
    let mut docs = Vec::with_capacity(paths.len());
    for p in paths {
        let mut text = String::new();
        std::fs::File::open(&p)
            .and_then(|f| f.take(MAX_ENTRY_BYTES as u64 + 1).read_to_string(&mut text))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        docs.push((name, text));
    }
    Ok(docs)
}

/// Loads `dir` once into the store.
pub fn load_into(dir: &Path, store: &KeyStore) -> Result<(), String> {
    let docs = read_dir(dir)?;
    store
        .apply(&docs, &source_name(dir))
        .map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
}

fn source_name(dir: &Path) -> String {
    format!("dir:{}", dir.display())
}

/// Watches `dir` and reloads the key set on change until `shutdown` flips.
pub fn spawn_watch(
    dir: PathBuf,
    store: Arc<KeyStore>,
    debounce: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (watcher, events) = watch::dir_events(&dir)?;
    let source = DirSource { dir: dir.clone(), _watcher: watcher };
    let target = Arc::new(StoreTarget { store, source: source_name(&dir) });
    let timing = watch::Timing::from_quiet(debounce).with_poll(watch::DIR_POLL_EVERY);
    Ok(tokio::spawn(watch::run(source, target, events, timing, shutdown)))
}

struct DirSource {
    dir: PathBuf,
    _watcher: notify::RecommendedWatcher,
}

impl watch::Source for DirSource {
    type Event = ();
    type Target = StoreTarget;

    fn observe(&mut self, _: ()) -> bool {
        true
    }

    fn collect(&mut self) -> impl FnOnce() -> Option<Vec<(String, String)>> + Send + 'static {
        let dir = self.dir.clone();
        move || {
            read_dir(&dir)
                .inspect_err(|e| tracing::error!(error = %e, "API key directory unreadable; last good set stays"))
                .ok()
        }
    }

    /// The store logs, counts and records the outcome itself.
    fn report(&mut self, _: watch::Applied<StoreTarget>) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}
