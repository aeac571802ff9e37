//! Capture of one output stream of a child process: at most the output cap kept, complete
//! stdout lines handed to a [`LineSink`] as they arrive, chunks pushed to a live tail.
//!
//! Invariant: memory stays bounded whatever the process prints — bytes past the cap are
//! counted, not kept, and a line longer than the cap plus an envelope is dropped, never
//! buffered whole.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::LineSink;
use crate::engine::live::{LiveOutput, Stream};

/// Room a line handed to a [`LineSink`] may take beyond the output cap (a stream-json line
/// wraps its text in an envelope); longer lines are dropped, never buffered.
const LINE_ENVELOPE: usize = 64 * 1024;
/// A line buffer grown past this by one long line is given back once the line is handed on.
const LINE_KEEP: usize = 256 * 1024;

/// Read size once a stream is producing output.
const READ_CHUNK: usize = 16 * 1024;

/// One stream's output as it is read: at most `cap` bytes kept, complete lines handed to
/// `on_line`. Lives outside the read, so what was read is kept when the read is given up.
pub(super) struct Capture {
    cap: usize,
    /// Longest line handed to the sink: the output cap plus an envelope.
    line_cap: usize,
    kept: Vec<u8>,
    dropped: u64,
    on_line: Option<LineSink>,
    line: Vec<u8>,
    line_cut: bool,
    /// Where each chunk is also pushed as it arrives, for a live tail.
    pub(super) live: Option<(Arc<LiveOutput>, Stream)>,
}

impl Capture {
    pub(super) fn new(cap: usize, on_line: Option<LineSink>) -> Capture {
        Capture {
            cap,
            line_cap: cap.saturating_add(LINE_ENVELOPE),
            kept: Vec::new(),
            dropped: 0,
            on_line,
            line: Vec::new(),
            line_cut: false,
            live: None,
        }
    }

    /// Reads `stream` to its end (or until the future is dropped).
    pub(super) async fn read_from(&mut self, mut stream: impl AsyncRead + Unpin) {
        // Empty until the stream first has data, so a silent step holds (almost) no buffer.
        let mut buf: Vec<u8> = Vec::new();
        loop {
            buf.clear();
            if buf.capacity() > 0 && buf.capacity() < READ_CHUNK {
                buf.reserve(READ_CHUNK);
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => self.take(&buf[..n]),
            }
        }
    }

    fn take(&mut self, chunk: &[u8]) {
        if let Some((live, stream)) = &self.live {
            live.push(*stream, chunk);
        }
        let n = chunk.len();
        let room = self.cap.saturating_sub(self.kept.len());
        let take = room.min(n);
        self.kept.extend_from_slice(&chunk[..take]);
        self.dropped += (n - take) as u64;
        let Some(sink) = self.on_line.as_mut() else {
            return;
        };
        for part in chunk.split_inclusive(|b| *b == b'\n') {
            let complete = part.last() == Some(&b'\n');
            let body = if complete {
                &part[..part.len() - 1]
            } else {
                part
            };
            let room = self.line_cap.saturating_sub(self.line.len());
            if body.len() > room {
                self.line_cut = true;
            }
            self.line.extend_from_slice(&body[..room.min(body.len())]);
            if complete {
                if !self.line_cut {
                    sink(&String::from_utf8_lossy(&self.line));
                }
                self.line.clear();
                if self.line.capacity() > LINE_KEEP {
                    self.line.shrink_to(LINE_KEEP);
                }
                self.line_cut = false;
            }
        }
    }

    /// The text kept, with a trailing marker if bytes were dropped; hands an unterminated
    /// last line to the sink.
    pub(super) fn finish(mut self) -> String {
        if let Some(sink) = self.on_line.as_mut()
            && !self.line.is_empty()
            && !self.line_cut
        {
            sink(&String::from_utf8_lossy(&self.line));
        }
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!(
                "\n[baton: output truncated, {} more bytes dropped]",
                self.dropped
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn output_read_before_the_read_is_given_up_is_kept() {
        // A writer that never closes: the read only ends by being abandoned.
        let (mut writer, reader) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"one\ntw")
            .await
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let sink: LineSink = Box::new(move |l| {
            let _ = tx.send(l.to_owned());
        });
        let mut cap = Capture::new(1024, Some(sink));
        let read = tokio::time::timeout(Duration::from_millis(50), cap.read_from(reader));
        assert!(
            read.await.is_err(),
            "the read ended although the writer is open"
        );
        assert_eq!(cap.finish(), "one\ntw");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["one", "tw"]);
        drop(writer);
    }

    #[test]
    fn a_line_longer_than_the_cap_is_dropped_and_its_buffer_given_back() {
        let (tx, rx) = std::sync::mpsc::channel();
        let sink: LineSink = Box::new(move |l| {
            let _ = tx.send(l.to_owned());
        });
        let mut c = Capture::new(1024, Some(sink));
        let long = vec![b'x'; LINE_ENVELOPE + 4096];
        c.take(&long);
        c.take(b"\nok\n");
        assert!(c.line.capacity() <= LINE_KEEP, "{}", c.line.capacity());
        let mut big = vec![b'y'; LINE_ENVELOPE];
        big.push(b'\n');
        c.take(&big);
        assert!(c.line.capacity() <= LINE_KEEP, "{}", c.line.capacity());
        drop(c);
        let lines: Vec<String> = rx.try_iter().collect();
        assert_eq!(lines.len(), 2, "the over-long line is dropped");
        assert_eq!(lines[0], "ok");
        assert_eq!(lines[1].len(), LINE_ENVELOPE);
    }
}
