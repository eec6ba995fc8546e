//! The HTTP/1.1 server under the router: an accept loop that serves at most
//! `limits.max_connections` connections at once (further ones wait in the
//! listen backlog), hyper configured with flowhost's head limits, and the
//! answers hyper writes on its own for a request it cannot parse (400, 414,
//! 431, with empty bodies) replaced by the JSON error shape, so every
//! rejection, even one axum never sees, answers JSON.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::ApiError;

/// Header fields a request may have (hyper's default, stated).
const MAX_HEADER_FIELDS: usize = 100;
/// A request head must arrive within this time; it also closes a keep-alive
/// connection left idle this long.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
pub(super) struct ServerLimits {
    pub max_connections: usize,
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// requests under way finish.
pub(super) async fn run(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_headers(MAX_HEADER_FIELDS)
        .max_header_size(limits.max_header_bytes)
        // hyper wants at least 8 KiB of buffer.
        .max_buf_size(limits.max_header_bytes.max(8 << 10));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first, then accept: past the limit, connections wait in the
        // kernel's backlog rather than being accepted and left unserved.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small JSON answers should leave at once, not wait on Nagle's algorithm.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(JsonAutoReplies::new(stream, limits));
        let connection = http.serve_connection(io, TowerToHyperService::new(router.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection whose writes are watched for hyper's own answers to a
/// request it could not parse. hyper writes them, head only, with no body,
/// just before it closes the connection; flowhost's answers always carry a
/// body, so the two cannot be confused. Writes are not vectored, so hyper
/// hands each response head over in one buffer.
struct JsonAutoReplies {
    stream: TcpStream,
    limits: ServerLimits,
    /// The JSON answer being written in place of hyper's, and how much of it
    /// is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl JsonAutoReplies {
    fn new(stream: TcpStream, limits: ServerLimits) -> Self {
        JsonAutoReplies {
            stream,
            limits,
            replacement: None,
        }
    }
}

/// The error that hyper's bodiless answer `head` stands for, if it is one.
fn auto_reply(head: &[u8], limits: ServerLimits) -> Option<ApiError> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let error = match rest.get(..4)? {
        b"400 " => ApiError::BadRequest,
        // Past 64 KiB: hyper's own bound, above any `max_uri_bytes` it lets in.
        b"414 " => ApiError::UriTooLong(limits.max_uri_bytes),
        b"431 " => ApiError::HeadersTooLarge {
            bytes: limits.max_header_bytes,
            fields: MAX_HEADER_FIELDS,
        },
        _ => return None,
    };
    let bodiless = head.ends_with(b"\r\n\r\n")
        && head
            .windows(b"\r\ncontent-length: 0\r\n".len())
            .any(|w| w == b"\r\ncontent-length: 0\r\n");
    bodiless.then_some(error)
}

impl AsyncRead for JsonAutoReplies {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonAutoReplies {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacement.is_none()
            && let Some(error) = auto_reply(buf, this.limits)
        {
            this.replacement = Some((error.raw_response(), 0));
        }
        let Some((reply, sent)) = &mut this.replacement else {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        };
        while *sent < reply.len() {
            let n = ready!(Pin::new(&mut this.stream).poll_write(cx, &reply[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        // hyper's bytes count as written: the JSON answer went in their place.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ServerLimits = ServerLimits {
        max_connections: 1,
        max_uri_bytes: 256,
        max_header_bytes: 1024,
    };

    #[test]
    fn only_hyper_bodiless_error_answers_are_replaced() {
        let hyper =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert!(matches!(
            auto_reply(hyper, LIMITS),
            Some(ApiError::HeadersTooLarge { .. })
        ));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 30\r\n\r\n{\"error\":\"x\",\"code\":\"bad_body\"}";
        assert!(auto_reply(ours, LIMITS).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(auto_reply(ok, LIMITS).is_none());
    }
}
