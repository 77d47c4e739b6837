//! Accepted connections as the gRPC server sees them (shared with the benchmark's ceiling
//! server, so both run on the same transport).
//!
//! h2 either copies a frame into its write buffer or, above a threshold, chains it and must
//! write it out before it can buffer the next frame. The threshold is 256 bytes on a connection
//! that reports vectored writes (TCP and Unix sockets do) and 1 KiB otherwise. A check response
//! carrying identity headers is 300–600 bytes, so with vectored writes every response cost its
//! own `writev`: 1.7 system calls per check under load, against 0.7 for a do-nothing server
//! whose answers are tiny. Reporting no vectored writes makes h2 copy responses of up to 1 KiB,
//! and the responses to many requests leave in one write.
//!
//! Every accepted connection also goes through [`guard`]: a per-listener connection cap, idle
//! and lifetime timeouts on its IO, and a back-off on failed accepts.
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpIncoming};

/// A connection whose writes h2 batches in its own buffer (see the module docs).
#[derive(Debug)]
pub struct Unvectored<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for Unvectored<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Unvectored<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<S: Connected> Connected for Unvectored<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

/// Accepted TCP connections, with `TCP_NODELAY` (a check answer must not wait for more data),
/// under `limits`.
pub fn tcp_incoming(
    listener: TcpListener,
    limits: ConnLimits,
    metrics: ListenerMetrics,
) -> impl Stream<Item = io::Result<Unvectored<Guarded<TcpStream>>>> {
    guard(TcpIncoming::from(listener).with_nodelay(Some(true)), limits, metrics).map(|conn| conn.map(Unvectored))
}

/// Accepted Unix socket connections, under `limits`.
pub fn unix_incoming(
    listener: UnixListener,
    limits: ConnLimits,
    metrics: ListenerMetrics,
) -> impl Stream<Item = io::Result<Unvectored<Guarded<UnixStream>>>> {
    guard(tokio_stream::wrappers::UnixListenerStream::new(listener), limits, metrics).map(|conn| conn.map(Unvectored))
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
    use super::*;

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
