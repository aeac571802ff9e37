//! The live tail of running command attempts: the last bytes of stdout and stderr while the
//! process runs, for the dashboard and the HTTP API (the full output is stored when the
//! attempt ends).
//!
//! Invariant: a tail exists only while its attempt runs in this process, holds at most
//! [`TAIL_BYTES`] per stream (nothing for a silent step), and is removed when the attempt
//! ends, so memory stays bounded by the running attempts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::api::ThreadId;

/// Bytes of each stream a live tail keeps.
pub const TAIL_BYTES: usize = 32 * 1024;

/// Which stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Tails {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Bytes seen so far over both streams.
    bytes: u64,
    /// Tells followers of every chunk; made when the first one follows, so the tail of an
    /// attempt nobody watches is two empty buffers.
    seen: Option<watch::Sender<u64>>,
}

/// The live tail of one running attempt.
pub struct LiveOutput {
    key: (ThreadId, String),
    tails: Mutex<Tails>,
}

impl LiveOutput {
    fn new(key: (ThreadId, String)) -> LiveOutput {
        LiveOutput {
            key,
            tails: Mutex::new(Tails::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tails> {
        self.tails.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a chunk of `stream`, keeping its last [`TAIL_BYTES`].
    pub fn push(&self, stream: Stream, chunk: &[u8]) {
        let mut t = self.lock();
        {
            let buf = match stream {
                Stream::Stdout => &mut t.stdout,
                Stream::Stderr => &mut t.stderr,
            };
            if chunk.len() >= TAIL_BYTES {
                buf.clear();
                buf.extend_from_slice(&chunk[chunk.len() - TAIL_BYTES..]);
            } else {
                let over = (buf.len() + chunk.len()).saturating_sub(TAIL_BYTES);
                buf.drain(..over);
                buf.extend_from_slice(chunk);
            }
        }
        t.bytes += chunk.len() as u64;
        let bytes = t.bytes;
        if let Some(seen) = &t.seen {
            seen.send_replace(bytes);
        }
    }

    /// The tail of `stream` so far, as text (a cut multi-byte character is replaced).
    pub fn text(&self, stream: Stream) -> String {
        let t = self.lock();
        let buf = match stream {
            Stream::Stdout => &t.stdout,
            Stream::Stderr => &t.stderr,
        };
        String::from_utf8_lossy(buf).into_owned()
    }

    /// Notices of new output; closed once the attempt ended and its tail was dropped.
    pub fn changes(&self) -> watch::Receiver<u64> {
        let mut t = self.lock();
        let bytes = t.bytes;
        t.seen
            .get_or_insert_with(|| watch::channel(bytes).0)
            .subscribe()
    }
}

impl std::fmt::Debug for LiveOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveOutput")
    }
}

impl std::fmt::Debug for LiveTails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveTails")
    }
}

/// The tails of every attempt running in this process.
#[derive(Default)]
pub struct LiveTails {
    map: Mutex<HashMap<(ThreadId, String), Arc<LiveOutput>>>,
}

impl LiveTails {
    fn lock(&self) -> MutexGuard<'_, HashMap<(ThreadId, String), Arc<LiveOutput>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the tail of step `step` of `thread`; it is removed when the guard drops.
    pub fn open(self: &Arc<Self>, thread: &ThreadId, step: &str) -> TailGuard {
        let key = (thread.clone(), step.to_owned());
        let live = Arc::new(LiveOutput::new(key.clone()));
        self.lock().insert(key, live.clone());
        TailGuard {
            tails: self.clone(),
            live,
        }
    }

    /// The tail of a step running here, if it is.
    pub fn get(&self, thread: &ThreadId, step: &str) -> Option<Arc<LiveOutput>> {
        self.lock().get(&(thread.clone(), step.to_owned())).cloned()
    }
}

/// Keeps a tail registered while its attempt runs.
pub struct TailGuard {
    tails: Arc<LiveTails>,
    live: Arc<LiveOutput>,
}

impl TailGuard {
    pub fn live(&self) -> Arc<LiveOutput> {
        self.live.clone()
    }
}

impl Drop for TailGuard {
    fn drop(&mut self) {
        let mut map = self.tails.lock();
        if map
            .get(&self.live.key)
            .is_some_and(|l| Arc::ptr_eq(l, &self.live))
        {
            map.remove(&self.live.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_last_bytes_of_each_stream_and_goes_with_its_attempt() {
        let tails = Arc::new(LiveTails::default());
        let t = ThreadId::from("t");
        let guard = tails.open(&t, "s");
        let live = tails.get(&t, "s").unwrap();
        let changes = live.changes();
        live.push(Stream::Stdout, b"hello ");
        live.push(Stream::Stdout, b"world");
        live.push(Stream::Stderr, b"warn");
        assert_eq!(live.text(Stream::Stdout), "hello world");
        assert_eq!(live.text(Stream::Stderr), "warn");
        assert!(changes.has_changed().unwrap());
        let big = vec![b'x'; TAIL_BYTES + 10];
        live.push(Stream::Stdout, &big);
        live.push(Stream::Stdout, b"end");
        let text = live.text(Stream::Stdout);
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("xend"));
        drop(live);
        drop(guard);
        assert!(
            tails.get(&t, "s").is_none(),
            "removed when the attempt ends"
        );
        assert!(changes.has_changed().is_err(), "followers see the end");
    }
}
