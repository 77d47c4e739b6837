//! One reload loop for every watched source (a policy directory, Kubernetes ConfigMaps, and
//! later API keys from Secrets): events are folded into the source's view, a burst of changes is
//! debounced (a quiet period, but never longer than a maximum wait, so a continuous stream of
//! changes still reloads), then the complete candidate is collected, built and validated by the
//! target, swapped in or refused with the last good one kept, and the result reported back to
//! the source. Generic over what is loaded: this module knows nothing about policies.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::path::Path;

use futures::{Stream, StreamExt as _};
use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// With only a quiet period given, a burst is folded for at most this many quiet periods.
pub(crate) const MAX_WAIT_FACTOR: u32 = 8;

/// Where a complete candidate goes: built and validated, swapped in when valid, else refused
/// with the last good one kept. Called on the blocking pool (parsing and validation are CPU
/// work).
pub(crate) trait Target: Send + Sync + 'static {
    type Candidate: Send + 'static;
    type Outcome: Send + 'static;
    type Error: Send + 'static;

    fn apply(&self, candidate: Self::Candidate) -> Result<Self::Outcome, Self::Error>;
}

/// What the target answered for one reload.
pub(crate) type Applied<T> = Result<<T as Target>::Outcome, <T as Target>::Error>;

/// A watched source: folds its events in, and produces complete candidates for its target.
pub(crate) trait Source: Send + 'static {
    type Event: Send + 'static;
    type Target: Target;

    /// Folds one event in; true when the candidate may have changed (only those count).
    fn observe(&mut self, event: Self::Event) -> bool;

    /// False while the source cannot yet produce a complete candidate (a reload waits).
    fn is_complete(&self) -> bool {
        true
    }

    /// The job that collects the complete candidate; it runs on the blocking pool, since
    /// collecting may read files. An error is the source's own to log: nothing is applied.
    fn collect(&mut self) -> impl FnOnce() -> Option<<Self::Target as Target>::Candidate> + Send + 'static;

    /// The target's answer (not called when collection failed).
    fn report(&mut self, applied: Applied<Self::Target>) -> impl Future<Output = ()> + Send;
}

/// When to reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// A reload waits until no change has arrived for this long...
    pub quiet: Duration,
    /// ...but never longer than this after the first change of a burst.
    pub max_wait: Duration,
    /// Reload this long after the last one even without events (for platforms that may drop
    /// file events); `None` for sources whose events are reliable.
    pub poll: Option<Duration>,
}

impl Timing {
    /// `quiet`, a maximum wait of [`MAX_WAIT_FACTOR`] quiet periods, no poll.
    pub(crate) fn from_quiet(quiet: Duration) -> Self {
        Self { quiet, max_wait: quiet.saturating_mul(MAX_WAIT_FACTOR), poll: None }
    }

    pub(crate) fn with_poll(self, every: Duration) -> Self {
        Self { poll: Some(every), ..self }
    }
}

/// The debounce state: when the pending reload is due, if one is.
#[derive(Debug, Clone)]
pub(crate) struct Debounce {
    quiet: Duration,
    max_wait: Duration,
    due: Option<Instant>,
    /// The latest the pending reload may happen: the first change of the burst + max wait.
    deadline: Option<Instant>,
}

impl Debounce {
    pub(crate) fn new(quiet: Duration, max_wait: Duration) -> Self {
        Self { quiet, max_wait: max_wait.max(quiet), due: None, deadline: None }
    }

    /// A change at `now`: the reload moves to `now + quiet`, but not past the burst's deadline.
    pub(crate) fn change(&mut self, now: Instant) {
        let deadline = *self.deadline.get_or_insert(now + self.max_wait);
        self.due = Some((now + self.quiet).min(deadline));
    }

    /// When the pending reload is due; `None` when nothing changed.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The pending reload starts: the next change begins a new burst.
    pub(crate) fn clear(&mut self) {
        (self.due, self.deadline) = (None, None);
    }
}

/// Runs `source` until `shutdown` flips (or its sender is gone) or `events` ends.
pub(crate) async fn run<S, E>(
    mut source: S,
    target: Arc<S::Target>,
    mut events: E,
    timing: Timing,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Source,
    E: Stream<Item = S::Event> + Unpin,
{
    let mut debounce = Debounce::new(timing.quiet, timing.max_wait);
    let mut next_poll = timing.poll.map(|p| Instant::now() + p);
    loop {
        let due = debounce.due();
        let wait = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let poll = async {
            match next_poll {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => break,
            ev = events.next() => match ev {
                None => break,
                Some(ev) => if source.observe(ev) {
                    debounce.change(Instant::now());
                },
            },
            _ = wait, if source.is_complete() => {
                debounce.clear();
                reload(&mut source, &target).await;
                next_poll = timing.poll.map(|p| Instant::now() + p);
            }
            _ = poll, if due.is_none() && source.is_complete() => {
                reload(&mut source, &target).await;
                next_poll = timing.poll.map(|p| Instant::now() + p);
            }
        }
    }
}

/// Collect → build, validate, swap or keep last good → report.
async fn reload<S: Source>(source: &mut S, target: &Arc<S::Target>) {
    let collect = source.collect();
    let target = target.clone();
    let job = tokio::task::spawn_blocking(move || collect().map(|candidate| target.apply(candidate)));
    match job.await {
        Ok(Some(applied)) => source.report(applied).await,
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "reload task failed; last good state stays"),
    }
}

/// Re-read a watched directory even without events, in case the platform drops some (e.g.
/// network filesystems changed from another host).
pub(crate) const DIR_POLL_EVERY: Duration = Duration::from_secs(30);

/// Kubelet's symlink to the current timestamped directory of a ConfigMap or Secret volume.
const KUBELET_DATA: &str = "..data";
/// A swap can remove the directory we resolved while we read it: resolve again this often.
const SWAP_RETRIES: usize = 5;

/// Reads `dir` with `read`, which may be a kubelet-managed volume: kubelet writes a new
/// timestamped directory and atomically renames a symlink over `..data`, so `..data` is resolved
/// once and everything is read from its target (reading the visible names one by one could mix
/// two updates); if `..data` moved meanwhile, the read may be partial and is done again.
pub(crate) fn read_volume<T, E>(
    dir: &Path,
    read: impl Fn(&Path) -> Result<T, E>,
    error: impl Fn(String) -> E,
) -> Result<T, E> {
    let data = dir.join(KUBELET_DATA);
    if !std::fs::symlink_metadata(&data).is_ok_and(|m| m.file_type().is_symlink()) {
        return read(dir);
    }
    for _ in 0..SWAP_RETRIES {
        let target = std::fs::canonicalize(&data).map_err(|e| error(format!("cannot resolve {KUBELET_DATA}: {e}")))?;
        let result = read(&target);
        // Kubelet removes the old directory only after the swap: if `..data` still points where
        // it did, nothing we read was being deleted.
        if std::fs::canonicalize(&data).ok().as_ref() == Some(&target) {
            return result;
        }
    }
    Err(error(format!("cannot get a stable read: {KUBELET_DATA} kept changing")))
}

/// Change events for `dir` (not recursive), coalesced: the watcher must be kept alive as long as
/// the stream is read.
pub(crate) fn dir_events(dir: &Path) -> notify::Result<(notify::RecommendedWatcher, ReceiverStream<()>)> {
    let (tx, rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only changes count: filtered here, before the channel coalesces, so an ignored event
        // can never take the place of a change.
        if res.is_ok_and(|ev| is_change(&ev.kind)) {
            // A full channel already means "reload pending": coalesce.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, ReceiverStream::new(rx)))
}

/// Whether a file event may have changed what a read sees. Our own reads arrive as access
/// events (open, read, close without writing): counting them made every reload trigger the
/// next one, forever. A writer closing its file does count.
pub(crate) fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Other => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};

    #[test]
    fn reads_are_not_changes_and_writes_are() {
        for read in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            assert!(!is_change(&read), "{read:?}");
        }
        for write in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            // Unknown kinds, such as the rescan after a queue overflow: re-read to be safe.
            EventKind::Other,
            EventKind::Any,
        ] {
            assert!(is_change(&write), "{write:?}");
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_single_change_is_due_after_the_quiet_period() {
        let t0 = Instant::now();
        let mut d = Debounce::new(ms(250), ms(2000));
        assert_eq!(d.due(), None, "nothing changed, nothing due");
        d.change(t0);
        assert_eq!(d.due(), Some(t0 + ms(250)));
    }

    #[test]
    fn each_change_of_a_burst_pushes_the_reload_back_by_the_quiet_period() {
        let t0 = Instant::now();
        let mut d = Debounce::new(ms(250), ms(2000));
        d.change(t0);
        d.change(t0 + ms(100));
        d.change(t0 + ms(300));
        assert_eq!(d.due(), Some(t0 + ms(550)));
    }

    #[test]
    fn a_continuous_stream_of_changes_still_reloads_at_the_maximum_wait() {
        let t0 = Instant::now();
        let mut d = Debounce::new(ms(250), ms(2000));
        // A change every 100 ms: the quiet period alone would never elapse.
        for i in 0..50 {
            d.change(t0 + ms(100 * i));
        }
        assert_eq!(d.due(), Some(t0 + ms(2000)), "due at the first change + max wait");
        // Once that reload starts, the next change starts a new burst with a new deadline.
        d.clear();
        assert_eq!(d.due(), None);
        d.change(t0 + ms(5000));
        d.change(t0 + ms(5100));
        assert_eq!(d.due(), Some(t0 + ms(5350)));
        for i in 0..30 {
            d.change(t0 + ms(5100 + 100 * i));
        }
        assert_eq!(d.due(), Some(t0 + ms(7000)));
    }

    #[test]
    fn a_maximum_wait_shorter_than_the_quiet_period_is_the_quiet_period() {
        let t0 = Instant::now();
        let mut d = Debounce::new(ms(500), ms(100));
        d.change(t0);
        assert_eq!(d.due(), Some(t0 + ms(500)));
    }

    #[test]
    fn timing_from_a_quiet_period_waits_at_most_eight_of_them() {
        let t = Timing::from_quiet(ms(250));
        assert_eq!(t.max_wait, ms(2000));
        assert_eq!(t.poll, None);
        assert_eq!(t.with_poll(ms(30_000)).poll, Some(ms(30_000)));
    }
}
