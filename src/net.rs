//! Accepted connections as the gRPC server sees them (shared with the benchmark's ceiling
//! server, so both run on the same transport).
//!
//! h2 writes a frame by copying it into its own buffer or, above a threshold (256 bytes with
//! vectored writes, 1 KiB without), by writing it out separately; then it flushes. A check
//! answer with identity headers and every spelling of every owned header to remove is over
//! 1 KiB, so each answer cost its own write calls: 2.7 `sendto` per check under load, against
//! 0.7 for a do-nothing server whose answers are tiny (each one a loopback delivery that wakes
//! the client). Every connection therefore writes through [`Batched`], a bounded buffer that h2's
//! writes fill and its flush empties in one call: the answers to many requests leave together
//! whatever their size.
//!
//! Every accepted connection also goes through [`guard`]: a per-listener connection cap, idle
//! and lifetime timeouts on its IO, and a back-off on failed accepts.
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpIncoming};

/// Bytes a connection's writes are gathered into before one system call: a round of answers.
/// An allow is ~1.3 KiB (its removal list), so 16 KiB held about 12 and a round of 16 streams
/// took two calls or more (0.17 `sendto` per check under the bench's load, 0.07 at 64 KiB: −3…4
/// µs of server CPU per cached check). Bounded per connection (`limits.grpc.max_connections` of
/// them at most: 16 MiB at the default 256); a larger write goes straight through.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// A connection whose writes are gathered until h2 has nothing more to write (see the module
/// docs).
///
/// h2 flushes after every frame it could not copy into its own buffer, so a flush does not
/// mean "done". The first flush after new writes is therefore answered at once without a system
/// call, and the connection task is woken: it runs again after the tasks already due (which may
/// answer more requests on this connection), and when a flush comes with nothing written since
/// the last one, h2 is done and the buffer is written out. A full buffer is written out when the
/// next write does not fit, whatever the flushes say.
#[derive(Debug)]
pub struct Batched<S> {
    conn: BufWriter<S>,
    /// Bytes were written since the last flush h2 asked for.
    written: bool,
}

impl<S: AsyncRead + AsyncWrite> Batched<S> {
    pub fn new(conn: S) -> Self {
        Batched { conn: BufWriter::with_capacity(WRITE_BUFFER_BYTES, conn), written: false }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Batched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Batched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.conn).poll_write(cx, buf))?;
        self.written |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.conn).poll_write_vectored(cx, bufs))?;
        self.written |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        // The buffer takes slices as cheaply as one piece, so h2 need not copy frames first.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if std::mem::take(&mut self.written) && !self.conn.buffer().is_empty() {
            // More may follow in this round: come back once the tasks already due have run.
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.conn).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_shutdown(cx)
    }
}

impl<S: Connected + AsyncWrite> Connected for Batched<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.conn.get_ref().connect_info()
    }
}

/// Accepted TCP connections, with `TCP_NODELAY` (a check answer must not wait for more data),
/// under `limits`.
pub fn tcp_incoming(
    listener: TcpListener,
    limits: ConnLimits,
    metrics: ListenerMetrics,
) -> impl Stream<Item = io::Result<Batched<Guarded<TcpStream>>>> {
    guard(TcpIncoming::from(listener).with_nodelay(Some(true)), limits, metrics).map(|conn| conn.map(Batched::new))
}

/// Accepted Unix socket connections, under `limits`.
pub fn unix_incoming(
    listener: UnixListener,
    limits: ConnLimits,
    metrics: ListenerMetrics,
) -> impl Stream<Item = io::Result<Batched<Guarded<UnixStream>>>> {
    guard(tokio_stream::wrappers::UnixListenerStream::new(listener), limits, metrics).map(|conn| conn.map(Batched::new))
}

/// Limits applied to every accepted connection of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections; one more is accepted and closed at once.
    pub max_connections: usize,
    /// Closed after this long without reading a byte.
    pub idle_timeout: Duration,
    /// Closed after this long whatever happens (`None`: no bound).
    pub max_lifetime: Option<Duration>,
}

/// Per-listener accept counters, in `portcullis_listener_*` with a bounded `listener` label.
#[derive(Clone)]
pub struct ListenerMetrics {
    accept_errors: Counter,
    refused: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// The listener metric families, registered once; [`ListenerFamilies::for_listener`] picks a label.
#[derive(Clone)]
pub struct ListenerFamilies {
    accept_errors: Family<ListenerLabel, Counter>,
    refused: Family<ListenerLabel, Counter>,
}

impl ListenerFamilies {
    pub fn register(registry: &mut Registry) -> Self {
        let accept_errors = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accepts (e.g. EMFILE), each followed by a short back-off",
            accept_errors.clone(),
        );
        let refused = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at once: the listener was at its cap",
            refused.clone(),
        );
        Self { accept_errors, refused }
    }

    pub fn for_listener(&self, listener: &'static str) -> ListenerMetrics {
        let l = ListenerLabel { listener };
        ListenerMetrics {
            accept_errors: self.accept_errors.get_or_create(&l).clone(),
            refused: self.refused.get_or_create(&l).clone(),
        }
    }
}

impl ListenerMetrics {
    /// Counters that no registry sees (tests, the benchmark).
    pub fn unregistered() -> Self {
        Self { accept_errors: Counter::default(), refused: Counter::default() }
    }

    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.get()
    }

    pub fn refused(&self) -> u64 {
        self.refused.get()
    }
}

/// Pause after the `n`th consecutive failed accept (n ≥ 1): 5 ms doubling up to 1 s. A failed
/// accept (`EMFILE`, `ENFILE`, `ENOBUFS`) usually fails again at once; retrying without a pause
/// spins a core and starves the connections already open.
pub fn accept_backoff(n: u32) -> Duration {
    const FIRST_MS: u64 = 5;
    const MAX: Duration = Duration::from_secs(1);
    let shift = n.saturating_sub(1).min(16);
    Duration::from_millis(FIRST_MS << shift).min(MAX)
}

/// Applies `limits` to a stream of accepted connections: failed accepts are counted and backed
/// off (never yielded: the server would retry at once), a connection over the cap is closed at
/// once (fast and visible to the client, instead of waiting unanswered in the backlog), every
/// other one carries its slot, freed when it closes, and its timeouts.
pub fn guard<S, St>(
    incoming: St,
    limits: ConnLimits,
    metrics: ListenerMetrics,
) -> impl Stream<Item = io::Result<Guarded<S>>>
where
    St: Stream<Item = io::Result<S>> + Unpin,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold(incoming, move |mut incoming| {
        let (slots, metrics) = (slots.clone(), metrics.clone());
        async move {
            let mut failures = 0u32;
            loop {
                match incoming.next().await? {
                    Ok(io) => {
                        failures = 0;
                        match slots.clone().try_acquire_owned() {
                            Ok(slot) => return Some((Ok(Guarded::new(io, slot, &limits)), incoming)),
                            Err(_) => {
                                metrics.refused.inc();
                                drop(io);
                            }
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        metrics.accept_errors.inc();
                        if failures == 1 {
                            tracing::warn!(error = %e, "accept failed; backing off");
                        }
                        tokio::time::sleep(accept_backoff(failures)).await;
                    }
                }
            }
        }
    })
}

/// An accepted connection holding its listener slot, closed (reads and writes fail with
/// `TimedOut`) after `idle_timeout` without a byte read or once `max_lifetime` has passed.
#[derive(Debug)]
pub struct Guarded<S> {
    io: S,
    idle_timeout: Duration,
    /// When a byte was last read: the hot path only stores this; the timer catches up lazily.
    last_read: tokio::time::Instant,
    idle: Pin<Box<Sleep>>,
    lifetime: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl<S> Guarded<S> {
    fn new(io: S, slot: OwnedSemaphorePermit, limits: &ConnLimits) -> Self {
        Self {
            io,
            idle_timeout: limits.idle_timeout,
            last_read: tokio::time::Instant::now(),
            idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            lifetime: limits.max_lifetime.map(|d| Box::pin(tokio::time::sleep(d))),
            _slot: slot,
        }
    }

    /// The connection inside.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Whether a timeout has passed (registering the wakers if not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle.as_mut().poll(cx).is_ready() {
            let due = self.last_read + self.idle_timeout;
            if due <= tokio::time::Instant::now() {
                return true;
            }
            // Something was read since the timer was set: move it and poll again (registers the
            // waker for the new deadline).
            self.idle.as_mut().reset(due);
        }
        matches!(self.lifetime.as_mut().map(|l| l.as_mut().poll(cx)), Some(Poll::Ready(())))
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle or too old")
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last_read = tokio::time::Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // A peer that stops reading stops our writes too: the same timeouts bound it.
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Counts the wake-ups a poll asked for.
    struct Wakes(AtomicUsize);

    impl futures::task::ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What the peer has received so far, without waiting for more.
    async fn received(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut got = vec![0u8; 4 * WRITE_BUFFER_BYTES];
        match tokio::time::timeout(Duration::from_millis(50), peer.read(&mut got)).await {
            Ok(Ok(n)) => got[..n].to_vec(),
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_first_flush_after_writes_is_deferred_once_and_the_next_writes_them_out() {
        let (conn, mut peer) = tokio::io::duplex(8 * WRITE_BUFFER_BYTES);
        let mut b = Batched::new(conn);
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        b.write_all(b"first answer").await.expect("buffered");
        assert!(matches!(Pin::new(&mut b).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        // Deferred: nothing left yet, and the connection task was asked to come back.
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(received(&mut peer).await.is_empty());
        // More answers in the same round join the first.
        b.write_all(b", second").await.expect("buffered");
        assert!(matches!(Pin::new(&mut b).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        // A flush with nothing new written: the round is over, everything leaves in one write.
        assert!(matches!(Pin::new(&mut b).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2, "no further deferral");
        assert_eq!(received(&mut peer).await, b"first answer, second");
        // Nothing buffered: a flush is a plain flush.
        assert!(matches!(Pin::new(&mut b).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_full_buffer_goes_out_without_waiting_for_a_flush_and_stays_bounded() {
        let (conn, mut peer) = tokio::io::duplex(8 * WRITE_BUFFER_BYTES);
        let mut b = Batched::new(conn);
        let chunk = vec![7u8; 1000];
        for _ in 0..(WRITE_BUFFER_BYTES / chunk.len() + 1) {
            b.write_all(&chunk).await.expect("written");
        }
        // No flush was asked for, yet the buffer's worth has left: memory per connection is
        // bounded by the buffer, not by what h2 writes before it flushes.
        let got = received(&mut peer).await;
        assert!(!got.is_empty() && got.len() <= WRITE_BUFFER_BYTES, "{}", got.len());
        assert!(b.conn.buffer().len() < WRITE_BUFFER_BYTES);
        // Shutting down writes out the rest.
        b.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.expect("rest");
        assert_eq!(got.len() + rest.len(), (WRITE_BUFFER_BYTES / chunk.len() + 1) * chunk.len());
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(accept_backoff(1), Duration::from_millis(5));
        assert_eq!(accept_backoff(2), Duration::from_millis(10));
        assert!(accept_backoff(3) > accept_backoff(2));
        assert_eq!(accept_backoff(20), Duration::from_secs(1));
        assert_eq!(accept_backoff(u32::MAX), Duration::from_secs(1));
    }

    /// `EMFILE`/`ENFILE` from accept: counted, backed off, never handed to the server (which
    /// would retry at once), and the next good connection still comes through.
    #[tokio::test]
    async fn failed_accepts_back_off_and_are_counted() {
        let emfile = || Err(io::Error::from_raw_os_error(24));
        let enfile = || Err(io::Error::from_raw_os_error(23));
        let items: Vec<io::Result<u8>> = vec![emfile(), enfile(), emfile(), Ok(7)];
        let metrics = ListenerMetrics::unregistered();
        let limits = ConnLimits { max_connections: 4, idle_timeout: Duration::from_secs(60), max_lifetime: None };
        let start = tokio::time::Instant::now();
        let out: Vec<_> = guard(futures::stream::iter(items), limits, metrics.clone()).collect().await;
        assert_eq!(out.len(), 1, "errors are not yielded");
        assert!(matches!(&out[0], Ok(g) if g.io == 7));
        assert_eq!(metrics.accept_errors(), 3);
        // Each failure slept its back-off (5 + 10 + 20 ms) rather than retrying at once.
        assert!(start.elapsed() >= accept_backoff(1) + accept_backoff(2) + accept_backoff(3));
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_dropped_until_a_slot_frees() {
        let metrics = ListenerMetrics::unregistered();
        let limits = ConnLimits { max_connections: 2, idle_timeout: Duration::from_secs(60), max_lifetime: None };
        let items: Vec<io::Result<u8>> = (1..=4).map(Ok).collect();
        let mut s = Box::pin(guard(futures::stream::iter(items), limits, metrics.clone()));
        let a = s.next().await.and_then(Result::ok);
        let b = s.next().await.and_then(Result::ok);
        assert_eq!(a.as_ref().map(|g| g.io), Some(1));
        assert_eq!(b.as_ref().map(|g| g.io), Some(2));
        // Both slots held: 3 and 4 are closed and counted; the stream ends.
        assert!(s.next().await.is_none());
        assert_eq!(metrics.refused(), 2);
    }
}
