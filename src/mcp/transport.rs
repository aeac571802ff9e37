//! The stdio transport: newline-delimited JSON-RPC on stdin and stdout.
//!
//! Invariant: every request whose `id` can be read gets an answer. A line that is JSON with a
//! readable `id` but is not a valid JSON-RPC message is answered with an "invalid request"
//! error carrying that id (a client waiting for it would otherwise wait forever); unparsable
//! bytes are ignored, as every MCP SDK does, so a peer echoing garbage cannot start an error
//! storm. Lines are bounded: an over-long line is discarded while it is read, never held.

use std::sync::Arc;

use rmcp::{
    ErrorData, RoleServer,
    model::NumberOrString,
    service::{RxJsonRpcMessage, TxJsonRpcMessage},
    transport::Transport,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc};

/// Longest request line accepted (a workflow definition travels inline).
const MAX_LINE: usize = 64 * 1024 * 1024;

/// Lines of stdin, read by one task for the life of the process, so a session that ends
/// early (a broken handshake) leaves stdin to the next session.
#[derive(Clone)]
pub struct Stdin {
    rx: Arc<Mutex<mpsc::Receiver<Vec<u8>>>>,
}

impl Stdin {
    /// Starts reading the process's stdin.
    pub fn start() -> Stdin {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(read_lines(tokio::io::stdin(), tx));
        Stdin {
            rx: Arc::new(Mutex::new(rx)),
        }
    }
}

async fn read_lines(input: impl tokio::io::AsyncRead + Unpin, tx: mpsc::Sender<Vec<u8>>) {
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    let mut discarding = false;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (part, complete) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        if !discarding {
            if line.len() + part.len() > MAX_LINE {
                tracing::error!(max = MAX_LINE, "request line too long; discarding it");
                discarding = true;
                line.clear();
            } else {
                line.extend_from_slice(part);
            }
        }
        let used = part.len() + usize::from(complete);
        reader.consume(used);
        if complete {
            if !discarding && tx.send(std::mem::take(&mut line)).await.is_err() {
                return;
            }
            discarding = false;
        }
    }
    if !discarding && !line.is_empty() {
        let _ = tx.send(line).await;
    }
}

/// One MCP session's transport over the process's stdin and stdout.
pub struct StdioTransport {
    input: Stdin,
    out: Arc<Mutex<tokio::io::Stdout>>,
}

impl StdioTransport {
    pub fn new(input: Stdin) -> StdioTransport {
        StdioTransport {
            input,
            out: Arc::new(Mutex::new(tokio::io::stdout())),
        }
    }
}

/// Writes one message as one line. The write runs in its own task, so a caller that stops
/// waiting (the service polls `receive` in a `select!`) can neither lose the message nor
/// leave half a line on stdout.
async fn write_message(
    out: Arc<Mutex<tokio::io::Stdout>>,
    item: TxJsonRpcMessage<RoleServer>,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(&item)?;
    bytes.push(b'\n');
    let task = tokio::spawn(async move {
        let mut out = out.lock().await;
        out.write_all(&bytes).await?;
        out.flush().await
    });
    task.await
        .map_err(|e| std::io::Error::other(format!("stdout writer failed: {e}")))?
}

/// What to do with a line that is not a valid message.
#[derive(Debug, PartialEq)]
enum Reject {
    /// Not JSON at all: ignore it.
    Ignore,
    /// JSON, but not a message: answer "invalid request" with this id, if readable.
    Answer(Option<NumberOrString>),
}

fn classify(line: &[u8]) -> Reject {
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return Reject::Ignore;
    };
    match v.get("id") {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Reject::Answer(Some(NumberOrString::Number(i))),
            None => Reject::Answer(None),
        },
        Some(Value::String(s)) => Reject::Answer(Some(NumberOrString::String(s.as_str().into()))),
        // A notification nobody waits for (other protocols' notifications included).
        None if v.get("method").and_then(Value::as_str).is_some() => Reject::Ignore,
        _ => Reject::Answer(None),
    }
}

impl Transport<RoleServer> for StdioTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        write_message(self.out.clone(), item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let line = self.input.rx.lock().await.recv().await?;
            let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(line) {
                Ok(msg) => return Some(msg),
                Err(e) => match classify(line) {
                    Reject::Ignore => tracing::debug!(error = %e, "ignoring an unparsable line"),
                    Reject::Answer(id) => {
                        tracing::debug!(error = %e, ?id, "answering an invalid request");
                        let reply = TxJsonRpcMessage::<RoleServer>::error(
                            ErrorData::invalid_request(format!("Invalid request: {e}"), None),
                            id,
                        );
                        if write_message(self.out.clone(), reply).await.is_err() {
                            return None;
                        }
                    }
                },
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.out.lock().await.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readable_id_is_always_answered() {
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":7,"method":5}"#),
            Reject::Answer(Some(NumberOrString::Number(7)))
        );
        assert_eq!(
            classify(br#"{"id":"a","method":"tools/call","params":3}"#),
            Reject::Answer(Some(NumberOrString::String("a".into())))
        );
        assert_eq!(classify(br#"{"foo":"bar"}"#), Reject::Answer(None));
        assert_eq!(classify(b"not json"), Reject::Ignore);
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","method":"$/lsp"}"#),
            Reject::Ignore
        );
    }

    #[tokio::test]
    async fn over_long_lines_are_discarded_and_the_next_line_survives() {
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend_from_slice(b"\n{\"a\":1}\n");
        let (tx, mut rx) = mpsc::channel(4);
        read_lines(&input[..], tx).await;
        assert_eq!(rx.recv().await.unwrap(), b"{\"a\":1}");
        assert!(rx.recv().await.is_none());
    }
}
