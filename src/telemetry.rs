//! Logging set-up: human-readable or JSON lines, filtered by config or `RUST_LOG`.
//!
//! Every check logs a decision line, so lines are handed to a dedicated thread that writes them
//! to stderr through a buffer: a check never waits on a `write(2)`, and under load many lines go
//! out per system call. The queue is bounded and never drops a line: when it is full (stderr
//! blocked), checks wait for room, because decision lines are an audit trail.
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Lines queued for the writer thread at most (~a few MB of JSON).
const MAX_QUEUED_LINES: usize = 8192;

/// Installs the global subscriber once; later calls are no-ops. Hold the guard until exit: when
/// dropped it writes out every queued line.
pub(crate) fn init(cfg: &LogConfig) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(MAX_QUEUED_LINES)
        .thread_name("portcullis-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    // Colours only for a person at a terminal, never in a collected log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}
