//! A plugin's stdout or stderr: kept in memory up to a byte limit, the rest
//! counted and dropped, so that a plugin printing without end costs the host
//! nothing. Writes never fail: a plugin is not punished for printing.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How much a plugin may write in one call; it loops for more.
const WRITE_BUDGET: usize = 64 * 1024;

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: usize,
}

/// One captured stream; clones share the buffer.
#[derive(Clone)]
pub struct Capture {
    buffer: Arc<Mutex<Buffer>>,
    limit: usize,
}

impl Capture {
    pub fn new(limit: usize) -> Self {
        Capture {
            buffer: Arc::default(),
            limit,
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let room = self.limit.saturating_sub(b.bytes.len());
        let kept = bytes.len().min(room);
        b.bytes.extend_from_slice(&bytes[..kept]);
        b.dropped += bytes.len() - kept;
    }

    /// What was written, as text with control characters other than newline
    /// and tab removed; a note says how many bytes were dropped. `None` when
    /// nothing was written.
    pub fn text(&self) -> Option<String> {
        let b = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        if b.bytes.is_empty() && b.dropped == 0 {
            return None;
        }
        let mut text: String = String::from_utf8_lossy(&b.bytes)
            .chars()
            .filter(|&c| !c.is_control() || c == '\n' || c == '\t')
            .collect();
        if b.dropped > 0 {
            text.push_str(&format!("\n[{} more bytes dropped]", b.dropped));
        }
        Some(text)
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_BUDGET)
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::Capture;

    #[test]
    fn keeps_up_to_the_limit_and_strips_control_characters() {
        let c = Capture::new(8);
        assert_eq!(c.text(), None);
        c.push(b"ab\x1b[1mc\n");
        c.push(b"defghij");
        assert_eq!(c.text().unwrap(), "ab[1mc\n\n[7 more bytes dropped]");
    }
}
