//! The connections a server holds: at most `limits.max_connections` at once, each closed if it
//! does not start talking within `limits.handshake_timeout` or goes silent for
//! `limits.idle_timeout`. Without these, idle sockets and half-sent prefaces cost nothing to
//! open and were never closed, until the process ran out of file descriptors and stopped
//! answering health. With TLS, the handshake happens here too, with the certificate of the
//! moment (see [`ServerTls`]), and must finish within the handshake timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::LimitsConfig;
use crate::tls::ServerTls;

/// Accepts on `listener` until `shutdown`, handing over the connections that sent their first
/// bytes in time, while fewer than `max_connections` are open.
pub fn incoming(
    listener: TcpListener,
    limits: &LimitsConfig,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<ServerIo>> {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (handshake, idle) = (limits.handshake_timeout, limits.idle_timeout);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let socket = match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // Out of descriptors or a reset before accept: wait a moment, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                metrics::counter!("ebb_connections_refused_total").increment(1);
                drop(socket);
                continue;
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                // In plaintext the whole HTTP/2 preface, or an HTTP/1.1 gRPC-Web request line,
                // must start in time (half a preface is the cheapest way to hold a socket);
                // with TLS, the ClientHello must start.
                let expected: &[&[u8]] = if tls.is_some() { &[b""] } else { STARTS };
                if !starts_within(&socket, expected, handshake).await {
                    metrics::counter!("ebb_connections_timed_out_total").increment(1);
                    return;
                }
                let _ = socket.set_nodelay(true);
                let stream = GuardedStream {
                    inner: socket,
                    idle,
                    deadline: Box::pin(tokio::time::sleep(idle)),
                    _permit: permit,
                };
                let io = match tls {
                    None => ServerIo::Plain(stream),
                    Some(tls) => {
                        let handshake = tokio::time::timeout_at(
                            started + handshake,
                            tls.acceptor().accept(stream),
                        );
                        match handshake.await {
                            Ok(Ok(stream)) => ServerIo::Tls(Box::new(stream)),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                metrics::counter!("ebb_connections_timed_out_total").increment(1);
                                return;
                            }
                        }
                    }
                };
                let _ = tx.send(Ok(io)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What every HTTP/2 connection starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a plaintext connection may start: the HTTP/2 preface, or an HTTP/1.1 gRPC-Web call or
/// its CORS preflight.
const STARTS: &[&[u8]] = &[PREFACE, b"POST /", b"OPTIONS /"];

/// Whether the peer sends at least one byte, and one of `expected` whole if they are not
/// empty, within `limit` (peeked, not consumed).
async fn starts_within(socket: &TcpStream, expected: &[&[u8]], limit: Duration) -> bool {
    let wanted = expected.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
    let check = async {
        let mut buf = [0u8; 24];
        loop {
            let n = match socket.peek(&mut buf[..wanted]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let seen = &buf[..n];
            let mut still_possible = false;
            for start in expected {
                if start.is_empty() || (seen.len() >= start.len() && seen.starts_with(start)) {
                    return true;
                }
                still_possible |= seen.len() < start.len() && start.starts_with(seen);
            }
            if !still_possible {
                return false;
            }
            // Part of it: peek returns at once while those bytes wait, so poll gently.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(limit, check).await.unwrap_or(false)
}

/// An accepted connection holding its place among `max_connections`, failing its reads once
/// nothing arrived for the idle timeout, which makes the server close it.
pub struct GuardedStream {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// A connection as the server speaks on it: plaintext, or TLS over it.
pub enum ServerIo {
    /// Plaintext HTTP/2.
    Plain(GuardedStream),
    /// HTTP/2 over TLS.
    Tls(Box<tokio_rustls::server::TlsStream<GuardedStream>>),
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(s) => s.is_write_vectored(),
            ServerIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            ServerIo::Plain(s) => s.connect_info(),
            ServerIo::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}
