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
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
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

/// Accepted TCP connections, with `TCP_NODELAY` (a check answer must not wait for more data).
pub fn tcp_incoming(listener: TcpListener) -> impl Stream<Item = io::Result<Unvectored<TcpStream>>> {
    TcpIncoming::from(listener).with_nodelay(Some(true)).map(|conn| conn.map(Unvectored))
}

/// Accepted Unix socket connections.
pub fn unix_incoming(listener: UnixListener) -> impl Stream<Item = io::Result<Unvectored<UnixStream>>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|conn| conn.map(Unvectored))
}
