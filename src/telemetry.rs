//! Logging set-up: human-readable or JSON lines, filtered by config or `RUST_LOG`.
//!
//! Every check logs a decision line, so lines are handed to a dedicated thread that writes them
//! to stderr in batches: a check never waits on a `write(2)`, and under load many lines go out per
//! system call. The queue is bounded. When it is full (stderr blocked: a full disk, a stuck
//! collector, a pipe nobody reads) `log.on_full` decides: `drop` the line at once, or `block` for
//! at most `log.block_timeout`. A line that does not fit is counted in
//! `portcullis_log_dropped_total` and reported by a periodic WARN; the check is answered either
//! way, because a log sink must never become an authorization outage.
//!
//! With JSON logs, lines that every check writes (the decision line) are not even formatted on the
//! check: the check queues a [`DeferredLine`] (its data, moved) and the writer thread formats it.
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat, OnFull};

/// Lines queued for the writer thread at most (~a few MB of JSON).
const MAX_QUEUED_LINES: usize = 8192;
/// At exit, how long queued lines may take to be written before the process ends anyway (a
/// blocked stderr must not keep a terminating pod alive).
const EXIT_FLUSH: Duration = Duration::from_secs(2);
/// The writer hands bytes to `write(2)` in chunks of about this size.
const WRITE_CHUNK: usize = 64 * 1024;
/// After writing a batch the writer lets lines gather this long before taking the next: one
/// wake-up and one `write` per batch instead of per line (at 10k checks/s a wake-up per line
/// cost more CPU than the line). Lines reach the sink at most this much later.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// Lines dropped by the process's log queue. Global like the subscriber it belongs to.
static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The queue deferred lines go to: set once the JSON subscriber is installed (never for text logs,
/// which `tracing` formats, nor in tests that install their own subscriber).
static DEFERRED: OnceLock<DeferredLines> = OnceLock::new();

/// A log line formatted by the writer thread rather than by the code that logs it: the caller
/// checks the level (`tracing::enabled!`) and hands over the data; the line must be exactly what
/// the installed formatter would have written.
pub(crate) trait DeferredLine: Send {
    /// Appends the whole line, newline included.
    fn write_line(&self, out: &mut Vec<u8>);
}

/// Where deferred lines are queued; the same queue, order and `log.on_full` handling as every
/// other line.
pub(crate) struct DeferredLines(Arc<Queue>);

impl DeferredLines {
    pub(crate) fn push(&self, line: Box<dyn DeferredLine>) {
        self.0.push(Item::Deferred(line));
    }
}

/// The deferred-line queue, when JSON lines are written by this module's writer thread.
pub(crate) fn deferred_lines() -> Option<&'static DeferredLines> {
    DEFERRED.get()
}

/// Registers `log_dropped` (`portcullis_log_dropped_total`) in the server's registry.
pub(crate) fn register(registry: &mut Registry) {
    registry.register(
        "log_dropped",
        "Log lines dropped because the log sink did not keep up (see log.on_full)",
        DROPPED.clone(),
    );
}

/// Installs the global subscriber once; later calls only return a guard. Hold the guard until
/// exit: when dropped it writes out the queued lines (for at most [`EXIT_FLUSH`]).
pub(crate) fn init(cfg: &LogConfig) -> LogGuard {
    let queue = Arc::new(Queue::new(cfg.on_full, cfg.block_timeout, MAX_QUEUED_LINES, DROPPED.clone()));
    let (done_tx, done) = mpsc::channel();
    {
        let q = queue.clone();
        let spawned = std::thread::Builder::new()
            .name("portcullis-log".into())
            .spawn(move || q.run_writer(std::io::stderr(), done_tx));
        if let Err(e) = spawned {
            eprintln!("cannot start the log writer thread: {e}");
        }
    }
    let interval = cfg.dropped_warn_interval;
    let _ = std::thread::Builder::new().name("portcullis-log-drops".into()).spawn(move || report_drops(interval));

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    // Colours only for a person at a terminal, never in a collected log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(QueueWriter(queue.clone()));
    let installed = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_ok() {
        if cfg.format == LogFormat::Json {
            let _ = DEFERRED.set(DeferredLines(queue.clone()));
        }
        // The default hook writes to stderr directly, blocking on a stalled sink; the server
        // catches check panics (a deny), so route the report through the bounded queue too.
        std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panicked")));
    }
    LogGuard { queue, done }
}

/// Every `interval`, a WARN with the lines dropped since the last one (if any). The WARN itself
/// goes through the queue and may be dropped too; it carries the running total, so the next one
/// that gets through tells the whole story (as does the metric).
fn report_drops(interval: Duration) {
    let mut reported = 0;
    loop {
        std::thread::sleep(interval);
        let total = DROPPED.get();
        if total > reported {
            tracing::warn!(
                dropped = total - reported,
                dropped_total = total,
                "log lines dropped: the log sink is not keeping up (log.on_full)"
            );
            reported = total;
        }
    }
}

/// Flushes the queue on drop, bounded by [`EXIT_FLUSH`].
pub(crate) struct LogGuard {
    queue: Arc<Queue>,
    done: mpsc::Receiver<()>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.queue.close();
        let _ = self.done.recv_timeout(EXIT_FLUSH);
    }
}

/// The bounded queue between log calls and the writer thread.
struct Queue {
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
    on_full: OnFull,
    block_timeout: Duration,
    capacity: usize,
    dropped: Counter,
}

/// One queued line: formatted already, or formatted by the writer.
enum Item {
    Bytes(Vec<u8>),
    Deferred(Box<dyn DeferredLine>),
}

struct State {
    lines: VecDeque<Item>,
    closed: bool,
    /// A blocking push timed out and the writer has not taken anything since: later lines are
    /// dropped without waiting, so a dead sink costs one `block_timeout`, not one per check.
    stalled: bool,
    /// The writer waits for a line: only then does a push wake it (a wake is a system call).
    writer_idle: bool,
}

impl Queue {
    fn new(on_full: OnFull, block_timeout: Duration, capacity: usize, dropped: Counter) -> Self {
        Self {
            state: Mutex::new(State { lines: VecDeque::new(), closed: false, stalled: false, writer_idle: false }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            on_full,
            block_timeout,
            capacity,
            dropped,
        }
    }

    /// A panic while holding the lock cannot leave the state inconsistent (plain pushes and
    /// swaps), so a poisoned lock is used as is rather than losing the log.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one line, or drops and counts it as `on_full` says.
    fn push(&self, line: Item) {
        let mut st = self.lock();
        if st.lines.len() >= self.capacity && !st.closed {
            if self.on_full == OnFull::Drop || st.stalled {
                drop(st);
                self.dropped.inc();
                return;
            }
            let deadline = Instant::now() + self.block_timeout;
            while st.lines.len() >= self.capacity && !st.closed {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    st.stalled = true;
                    drop(st);
                    self.dropped.inc();
                    return;
                }
                st = self.not_full.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0;
            }
        }
        if st.closed {
            // After the exit flush started nothing is written any more.
            drop(st);
            self.dropped.inc();
            return;
        }
        st.lines.push_back(line);
        let wake = std::mem::take(&mut st.writer_idle);
        drop(st);
        if wake {
            self.not_empty.notify_one();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    /// The writer thread: takes everything queued at once, writes it, repeats; signals `done`
    /// once the queue is closed and written out.
    fn run_writer(&self, mut out: impl Write, done: mpsc::Sender<()>) {
        let mut batch = VecDeque::new();
        let mut buf = Vec::with_capacity(WRITE_CHUNK);
        loop {
            let closed = {
                let mut st = self.lock();
                while st.lines.is_empty() && !st.closed {
                    st.writer_idle = true;
                    st = self.not_empty.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
                st.writer_idle = false;
                std::mem::swap(&mut batch, &mut st.lines);
                st.stalled = false;
                st.closed
            };
            self.not_full.notify_all();
            let mut in_buf = 0;
            for line in batch.drain(..) {
                match line {
                    Item::Bytes(b) => buf.extend_from_slice(&b),
                    Item::Deferred(l) => l.write_line(&mut buf),
                }
                in_buf += 1;
                if buf.len() >= WRITE_CHUNK {
                    self.write_out(&mut out, &mut buf, in_buf);
                    in_buf = 0;
                }
            }
            self.write_out(&mut out, &mut buf, in_buf);
            if closed {
                let _ = done.send(());
                return;
            }
            std::thread::sleep(BATCH_WINDOW);
        }
    }

    /// Writes `buf` (holding `lines` lines); lines a failing sink did not take count as dropped.
    fn write_out(&self, out: &mut impl Write, buf: &mut Vec<u8>, lines: u64) {
        if buf.is_empty() {
            return;
        }
        if out.write_all(buf).and_then(|()| out.flush()).is_err() {
            self.dropped.inc_by(lines);
        }
        buf.clear();
        // Keep one chunk's worth of memory, not the largest burst ever seen.
        buf.shrink_to(WRITE_CHUNK);
    }
}

/// `MakeWriter` for the fmt layer: each event is formatted whole and written with one call.
struct QueueWriter(Arc<Queue>);

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(&self.0)
    }
}

struct LineWriter<'a>(&'a Queue);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(Item::Bytes(buf.to_vec()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a [`Stuck`] sink when set to true.
    type Gate = Arc<(Mutex<bool>, Condvar)>;
    /// What a [`Stuck`] sink was given once open.
    type Written = Arc<Mutex<Vec<u8>>>;

    /// A sink that takes nothing until released, like a pipe nobody reads.
    struct Stuck(Gate, Written);

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn stuck_queue(on_full: OnFull) -> (Arc<Queue>, Gate, Written, mpsc::Receiver<()>) {
        let q = Arc::new(Queue::new(on_full, Duration::from_millis(20), 4, Counter::default()));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let (q2, sink) = (q.clone(), Stuck(gate.clone(), written.clone()));
        std::thread::spawn(move || q2.run_writer(sink, tx));
        (q, gate, written, rx)
    }

    /// Pushes until the writer holds one batch and the queue is full again.
    fn fill(q: &Queue) {
        q.push(Item::Bytes(b"first\n".to_vec()));
        // The writer takes the first line and then blocks in the sink.
        while !q.lock().lines.is_empty() {
            std::thread::yield_now();
        }
        for i in 0..q.capacity {
            q.push(Item::Bytes(format!("line {i}\n").into_bytes()));
        }
        assert_eq!(q.lock().lines.len(), q.capacity);
    }

    #[test]
    fn drop_mode_counts_lines_that_do_not_fit_and_never_waits() {
        let (q, gate, written, done) = stuck_queue(OnFull::Drop);
        fill(&q);
        for _ in 0..10 {
            q.push(Item::Bytes(b"over\n".to_vec()));
        }
        assert_eq!(q.dropped.get(), 10);
        // Once the sink moves again, everything queued is written and nothing else is lost.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        q.close();
        done.recv_timeout(Duration::from_secs(10)).expect("writer finished");
        let out = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1 + q.capacity, "{out}");
        assert!(!out.contains("over"));
    }

    #[test]
    fn block_mode_waits_once_then_drops_until_the_writer_moves() {
        let (q, gate, _written, done) = stuck_queue(OnFull::Block);
        fill(&q);
        q.push(Item::Bytes(b"timed out\n".to_vec()));
        assert_eq!(q.dropped.get(), 1);
        assert!(q.lock().stalled, "a timed-out wait marks the sink stalled");
        // Stalled: later lines are dropped without another wait.
        q.push(Item::Bytes(b"no wait\n".to_vec()));
        assert_eq!(q.dropped.get(), 2);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        // The writer takes the queue: the stall is over and lines fit again.
        while q.lock().stalled {
            std::thread::yield_now();
        }
        q.push(Item::Bytes(b"fits\n".to_vec()));
        assert_eq!(q.dropped.get(), 2);
        q.close();
        done.recv_timeout(Duration::from_secs(10)).expect("writer finished");
        q.push(Item::Bytes(b"after close\n".to_vec()));
        assert_eq!(q.dropped.get(), 3);
    }

    /// A deferred line with fixed text.
    struct Fixed(&'static str);

    impl DeferredLine for Fixed {
        fn write_line(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(self.0.as_bytes());
        }
    }

    #[test]
    fn deferred_lines_are_formatted_by_the_writer_in_queue_order() {
        let q = Queue::new(OnFull::Drop, Duration::from_millis(20), 16, Counter::default());
        q.push(Item::Bytes(b"a\n".to_vec()));
        q.push(Item::Deferred(Box::new(Fixed("b\n"))));
        q.push(Item::Bytes(b"c\n".to_vec()));
        q.close();
        let (tx, rx) = mpsc::channel();
        let mut out = Vec::new();
        q.run_writer(&mut out, tx);
        rx.recv_timeout(Duration::from_secs(1)).expect("done");
        assert_eq!(out, b"a\nb\nc\n");
        assert_eq!(q.dropped.get(), 0);
    }

    #[test]
    fn a_deferred_line_that_does_not_fit_is_dropped_and_counted() {
        let (q, gate, written, done) = stuck_queue(OnFull::Drop);
        fill(&q);
        q.push(Item::Deferred(Box::new(Fixed("deferred\n"))));
        assert_eq!(q.dropped.get(), 1);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        q.close();
        done.recv_timeout(Duration::from_secs(10)).expect("writer finished");
        let out = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(!out.contains("deferred"), "{out}");
    }

    #[test]
    fn a_failing_sink_counts_its_lines_as_dropped() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let q = Arc::new(Queue::new(OnFull::Drop, Duration::from_millis(20), 16, Counter::default()));
        for _ in 0..3 {
            q.push(Item::Bytes(b"x\n".to_vec()));
        }
        q.close();
        let (tx, rx) = mpsc::channel();
        q.run_writer(Broken, tx);
        rx.recv_timeout(Duration::from_secs(1)).expect("done");
        assert_eq!(q.dropped.get(), 3);
    }
}
