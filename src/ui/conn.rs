//! The connections the dashboard holds: at most [`MAX_CONNECTIONS`] at once (the next
//! accept waits for one to close), and each closed once it has been silent too long: its
//! idle limit after the server last wrote to it (or since it was opened), ten times that
//! after the client last sent something (a request being read, or answered: a page that
//! takes long to make is not cut off). A client that connects and sends nothing, or a
//! keep-alive connection left open, gives its slot back instead of holding a file
//! descriptor for good; a live page's event stream writes a keep-alive comment every 15 s,
//! so it stays.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a connection may stay silent both ways (`PIPE_UI_IDLE_SECS` sets it).
pub fn idle_limit() -> Duration {
    let secs = std::env::var("PIPE_UI_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// A TCP listener that hands out [`Guarded`] connections.
pub struct Listener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl Listener {
    /// Wrap `inner`.
    pub fn new(inner: TcpListener, idle: Duration) -> Self {
        Listener {
            inner,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            idle,
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Guarded;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Guarded, std::net::SocketAddr) {
        // The semaphore is never closed, so this waits for a slot rather than fail.
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the connection slots are never closed");
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    return (
                        Guarded {
                            io,
                            _slot: permit,
                            idle: Box::pin(tokio::time::sleep(self.idle)),
                            limit: self.idle,
                        },
                        addr,
                    )
                }
                // Out of file descriptors, or a connection reset before it was taken:
                // wait a moment and take the next (as axum's own listener does).
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// One connection: its slot, and the time it may stay silent.
pub struct Guarded {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
    limit: Duration,
}

/// How much longer a connection may stay silent after the client sent something than
/// after the server wrote.
const SERVING: u32 = 10;

impl Guarded {
    /// Something was read (`read`) or written: the silence starts again.
    fn touch(&mut self, read: bool) {
        let limit = if read {
            self.limit * SERVING
        } else {
            self.limit
        };
        self.idle.as_mut().reset(Instant::now() + limit);
    }

    /// Waiting on the socket: an error once it has been silent too long.
    fn silent<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                // An end of file is no request: the usual limit.
                let got = buf.filled().len() > before;
                this.touch(got);
                Poll::Ready(r)
            }
            Poll::Pending => this.silent(cx),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.touch(false);
                Poll::Ready(r)
            }
            Poll::Pending => this.silent(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
