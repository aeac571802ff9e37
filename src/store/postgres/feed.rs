//! The change feed between processes: each commit is announced with `NOTIFY`; a listener
//! connection turns other processes' notifications into [`Change::Unknown`], and a slow poll of
//! the event cursor covers a lost notification or a dropped listener.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::store::Change;

/// How often the listener checks the event cursor in case a notification was lost.
const FALLBACK_POLL: Duration = Duration::from_millis(1000);
/// The channel of change notifications.
pub(super) const CHANNEL: &str = "baton_changes";

/// Turns other processes' notifications into [`Change::Unknown`], reconnecting with backoff;
/// polls the event cursor meanwhile, so a lost notification only delays.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    instance: String,
    changes: broadcast::Sender<Change>,
    closed: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !closed.is_cancelled() {
        let session = listen_once(&config, &instance, &changes, &closed);
        if let Err(e) = session.await {
            tracing::debug!(error = %e, "change listener lost its connection; reconnecting");
        } else {
            delay = Duration::from_millis(100);
        }
        // Whatever was missed meanwhile: re-read.
        let _ = changes.send(Change::Unknown);
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    instance: &str,
    changes: &broadcast::Sender<Change>,
    closed: &CancellationToken,
) -> std::result::Result<(), tokio_postgres::Error> {
    let (client, mut conn) = config.connect(NoTls).await?;
    let (note_tx, mut notes) = mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures::StreamExt;
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if note_tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let _ = changes.send(Change::Unknown);
    let mine = format!("{instance}:");
    let mut last_cursor: Option<i64> = None;
    let mut poll = tokio::time::interval(FALLBACK_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            () = closed.cancelled() => break Ok(()),
            note = notes.recv() => match note {
                Some(payload) => {
                    if !payload.starts_with(&mine) {
                        let _ = changes.send(Change::Unknown);
                    }
                }
                None => break Ok(()),
            },
            _ = poll.tick() => {
                if changes.receiver_count() == 0 {
                    continue;
                }
                match client.query_one("SELECT value FROM event_cursor", &[]).await {
                    Ok(row) => {
                        let now: Option<i64> = row.try_get(0).ok();
                        if last_cursor.is_some() && now != last_cursor {
                            let _ = changes.send(Change::Unknown);
                        }
                        last_cursor = now;
                    }
                    Err(e) => break Err(e),
                }
            }
        }
    };
    driver.abort();
    result
}
