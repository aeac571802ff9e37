//! Capture of one output stream of a child process: at most the output cap kept, complete
//! stdout lines handed to a [`LineSink`] as they arrive, chunks pushed to a live tail.
//!
//! Invariant: memory stays bounded whatever the process prints — bytes past the cap are
//! counted, not kept, and a line longer than the cap plus an envelope is dropped, never
//! buffered whole.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::LineSink;
use crate::engine::live::{LiveOutput, Stream};

/// Room a line handed to a [`LineSink`] may take beyond the output cap (a stream-json line
/// wraps its text in an envelope); longer lines are dropped, never buffered.
const LINE_ENVELOPE: usize = 64 * 1024;
/// A line buffer grown past this by one long line is given back once the line is handed on.
const LINE_KEEP: usize = 256 * 1024;

/// Most bytes one read takes, into a buffer on the stack of the poll.
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

    /// Reads what `stream` has ready; `Ready` once it has ended (or failed). The buffer is on
    /// the stack of this poll, so a waiting read holds no memory of its own.
    pub(super) fn poll_from(
        &mut self,
        stream: &mut (impl AsyncRead + Unpin),
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut space = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            let mut buf = ReadBuf::uninit(&mut space);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => self.take(buf.filled()),
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

/// Both pipes of a child read into their captures, as one future polled by the task that
/// awaits the child: a waiting attempt holds its two streams and nothing else. Each stream
/// is closed once it has ended; the future is ready when both have.
pub(super) struct Pipes<'a, O, E> {
    out: Option<(O, &'a mut Capture)>,
    err: Option<(E, &'a mut Capture)>,
}

impl<'a, O, E> Pipes<'a, O, E> {
    pub(super) fn new(
        out: (Option<O>, &'a mut Capture),
        err: (Option<E>, &'a mut Capture),
    ) -> Self {
        Pipes {
            out: out.0.map(|s| (s, out.1)),
            err: err.0.map(|s| (s, err.1)),
        }
    }
}

impl<O: AsyncRead + Unpin, E: AsyncRead + Unpin> Future for Pipes<'_, O, E> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some((s, c)) = &mut this.out
            && c.poll_from(s, cx).is_ready()
        {
            this.out = None;
        }
        if let Some((s, c)) = &mut this.err
            && c.poll_from(s, cx).is_ready()
        {
            this.err = None;
        }
        if this.out.is_none() && this.err.is_none() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
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
        let mut reader = reader;
        let read = tokio::time::timeout(
            Duration::from_millis(50),
            std::future::poll_fn(|cx| cap.poll_from(&mut reader, cx)),
        );
        assert!(
            read.await.is_err(),
            "the read ended although the writer is open"
        );
        assert_eq!(cap.finish(), "one\ntw");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["one", "tw"]);
        drop(writer);
    }

    #[tokio::test]
    async fn both_pipes_are_read_by_one_future_and_each_is_closed_once_it_has_ended() {
        let (mut out_w, out_r) = tokio::io::duplex(64);
        let (mut err_w, err_r) = tokio::io::duplex(64);
        let (mut out, mut err) = (Capture::new(1024, None), Capture::new(1024, None));
        let mut pipes = Pipes::new((Some(out_r), &mut out), (Some(err_r), &mut err));
        tokio::io::AsyncWriteExt::write_all(&mut out_w, b"done")
            .await
            .unwrap();
        drop(out_w);
        tokio::io::AsyncWriteExt::write_all(&mut err_w, b"still ")
            .await
            .unwrap();
        // Polled until stdout's end has been read; stderr is still open.
        let ready = std::future::poll_fn(|cx| {
            Poll::Ready(std::pin::Pin::new(&mut pipes).poll(cx).is_ready())
        })
        .await;
        assert!(!ready, "the future ended while stderr is open");
        assert!(pipes.out.is_none(), "an ended stream is closed at once");
        tokio::io::AsyncWriteExt::write_all(&mut err_w, b"going")
            .await
            .unwrap();
        drop(err_w);
        pipes.await;
        assert_eq!(out.finish(), "done");
        assert_eq!(err.finish(), "still going");
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
