//! The connections the dashboard holds: at most [`MAX_CONNECTIONS`] at once (the next
//! accept waits for one to close), and each closed once it has been silent too long: its
//! idle limit after the server last wrote to it (or since it was opened), ten times that
//! once a request's head has arrived whole (a page that takes long to make is not cut
//! off). A request's head must arrive whole within three times the idle limit of its first
//! byte, however the bytes trickle in: a client that sends a byte now and then (slowloris)
//! cannot hold a slot for good. A client that connects and sends nothing, or a keep-alive
//! connection left open, gives its slot back instead of holding a file descriptor for
//! good; a live page's event stream writes a keep-alive comment every 15 s, so it stays.

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
                            phase: Phase::Waiting,
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

/// One connection: its slot, the time it may stay silent, and where its request is.
pub struct Guarded {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
    limit: Duration,
    phase: Phase,
}

/// Where a connection's current request is, as far as its bytes tell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Nothing received since the server last wrote (or since it opened).
    Waiting,
    /// A request's head is arriving: since when, the length of its current line (without
    /// `\r`), and whether a line that was not empty has ended yet (an empty line then
    /// ends the head).
    Head {
        since: Instant,
        line: usize,
        lines: bool,
    },
    /// The head arrived whole: the server is making the answer.
    Serving,
}

/// How much longer a connection may stay silent once its request's head has arrived than
/// after the server wrote.
const SERVING: u32 = 10;

/// How long, in idle limits, a request's head may take to arrive from its first byte.
const HEAD: u32 = 3;

impl Phase {
    /// `bytes` received in this phase: the phase after them (a head ends at an empty line,
    /// `\r\n\r\n` or `\n\n`).
    fn after(self, bytes: &[u8], now: Instant) -> Phase {
        let (since, mut line, mut lines) = match self {
            Phase::Serving => return Phase::Serving,
            Phase::Waiting => (now, 0, false),
            Phase::Head { since, line, lines } => (since, line, lines),
        };
        for &b in bytes {
            match b {
                b'\n' if line == 0 && lines => return Phase::Serving,
                // Empty lines before the request line are skipped (as the parser does):
                // they end no head.
                b'\n' if line == 0 => {}
                b'\n' => {
                    line = 0;
                    lines = true;
                }
                b'\r' => {}
                _ => line += 1,
            }
        }
        Phase::Head { since, line, lines }
    }
}

impl Guarded {
    /// Something was written: the request was answered (or a stream went on), and the
    /// silence starts again.
    fn wrote(&mut self) {
        self.phase = Phase::Waiting;
        self.idle.as_mut().reset(Instant::now() + self.limit);
    }

    /// `bytes` were read (none: the end of the client's side).
    fn read(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        if bytes.is_empty() {
            self.idle.as_mut().reset(now + self.limit);
            return;
        }
        self.phase = self.phase.after(bytes, now);
        let deadline = match self.phase {
            // A head arriving is never given more time by its next byte.
            Phase::Head { since, .. } => since + self.limit * HEAD,
            Phase::Serving => now + self.limit * SERVING,
            Phase::Waiting => now + self.limit,
        };
        self.idle.as_mut().reset(deadline);
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
                this.read(&buf.filled()[before..]);
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
                this.wrote();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(p: Phase) -> Option<(usize, bool)> {
        match p {
            Phase::Head { line, lines, .. } => Some((line, lines)),
            _ => None,
        }
    }

    #[test]
    fn a_head_ends_at_its_empty_line_however_the_bytes_are_cut() {
        let now = Instant::now();
        let text = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..text.len() {
            let p = Phase::Waiting.after(&text[..cut], now);
            assert_ne!(p, Phase::Serving, "done after {cut} bytes");
            assert_eq!(p.after(&text[cut..], now), Phase::Serving, "cut at {cut}");
        }
        // Bare line feeds, and byte by byte.
        let mut p = Phase::Waiting;
        for &b in b"GET / HTTP/1.1\nHost: a\n" {
            p = p.after(&[b], now);
        }
        assert_eq!(head(p), Some((0, true)));
        assert_eq!(p.after(b"\n", now), Phase::Serving);
        // A head's start is when its first byte came, whatever came after.
        let later = now + Duration::from_secs(5);
        match Phase::Waiting.after(b"GE", now).after(b"T", later) {
            Phase::Head { since, .. } => assert_eq!(since, now),
            other => panic!("{other:?}"),
        }
        // Empty lines before a request end nothing: the parser skips them too.
        let blank = Phase::Waiting.after(b"\r\n\r\n\n\n", now);
        assert_eq!(head(blank), Some((0, false)));
        assert_eq!(blank.after(b"GET / HTTP/1.1\r\n\r\n", now), Phase::Serving);
        // A line that is only "\r" is still the empty line.
        assert_eq!(Phase::Waiting.after(b"GET /\r\n\r\n", now), Phase::Serving);
        assert_eq!(head(Phase::Waiting.after(b"GET /", now)), Some((5, false)));
    }
}
