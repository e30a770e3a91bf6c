//! The one server-sent event stream a console page listens to (`GET /live`). Rows (bus
//! events, saga changes) are kept in a bounded log and carry an id `<boot>-<seq>`, so a page
//! that reconnects with `Last-Event-ID` gets what it missed; after a restart of the console
//! (another boot) it gets the whole log and drops the rows it already shows by their own
//! keys. Snapshots (health) are not kept: a new stream starts with the latest one.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{broadcast, watch};

/// Rows kept for streams that resume.
pub const LOG: usize = 2048;
const CHANNEL: usize = 1024;
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon a page's EventSource reconnects after the stream ended.
pub const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Message {
    /// None for a snapshot.
    pub seq: Option<u64>,
    pub event: &'static str,
    pub data: String,
}

#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    boot: String,
    next: AtomicU64,
    log: Mutex<VecDeque<Arc<Message>>>,
    sender: broadcast::Sender<Arc<Message>>,
    /// The latest snapshot of each kind, sent first on every new stream.
    snapshots: Mutex<Vec<Arc<Message>>>,
    stop: watch::Sender<bool>,
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

impl Live {
    pub fn new() -> Live {
        let (sender, _) = broadcast::channel(CHANNEL);
        Live {
            inner: Arc::new(Inner {
                boot: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
                next: AtomicU64::new(1),
                log: Mutex::new(VecDeque::with_capacity(LOG)),
                sender,
                snapshots: Mutex::new(Vec::new()),
                stop: watch::Sender::new(false),
            }),
        }
    }

    /// Sends a row to every stream and keeps it for those that resume.
    pub fn row(&self, event: &'static str, data: String) {
        let mut log = self.inner.log.lock().expect("live log lock");
        let message = Arc::new(Message {
            seq: Some(self.inner.next.fetch_add(1, Ordering::SeqCst)),
            event,
            data,
        });
        if log.len() == LOG {
            log.pop_front();
        }
        log.push_back(message.clone());
        // Sent under the lock, so a stream that reads the log and then the channel sees
        // every row once.
        let _ = self.inner.sender.send(message);
    }

    /// Replaces the snapshot of `event` and sends it to every stream.
    pub fn snapshot(&self, event: &'static str, data: String) {
        let message = Arc::new(Message {
            seq: None,
            event,
            data,
        });
        {
            let mut snapshots = self.inner.snapshots.lock().expect("snapshot lock");
            snapshots.retain(|m| m.event != event);
            snapshots.push(message.clone());
        }
        let _ = self.inner.sender.send(message);
    }

    /// The rows kept, oldest first, as `(id, data)` of those of `event`.
    pub fn rows(&self, event: &str) -> Vec<(String, String)> {
        let log = self.inner.log.lock().expect("live log lock");
        log.iter()
            .filter(|m| m.event == event)
            .map(|m| (self.id(m.seq.unwrap_or(0)), m.data.clone()))
            .collect()
    }

    fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.inner.boot)
    }

    /// Ends every stream (shutdown): pages reconnect to the next console.
    pub fn close(&self) {
        let _ = self.inner.stop.send(true);
    }

    /// The messages a new stream gets: the snapshots, then the rows after `last_event_id`
    /// (all of them if it is from another boot or unknown), then live ones.
    fn open(
        &self,
        last_event_id: Option<&str>,
    ) -> (Vec<Arc<Message>>, broadcast::Receiver<Arc<Message>>, u64) {
        let log = self.inner.log.lock().expect("live log lock");
        let receiver = self.inner.sender.subscribe();
        let after = last_event_id
            .and_then(|id| id.split_once('-'))
            .filter(|(boot, _)| *boot == self.inner.boot)
            .and_then(|(_, seq)| seq.parse::<u64>().ok())
            .unwrap_or(0);
        let mut first: Vec<Arc<Message>> =
            self.inner.snapshots.lock().expect("snapshot lock").clone();
        first.extend(log.iter().filter(|m| m.seq > Some(after)).cloned());
        let replayed = log.back().and_then(|m| m.seq).unwrap_or(after).max(after);
        (first, receiver, replayed)
    }

    /// The SSE response of one page.
    pub fn stream(
        &self,
        last_event_id: Option<&str>,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
        let (first, receiver, replayed) = self.open(last_event_id);
        let live = self.clone();
        let stop = self.inner.stop.subscribe();
        let stream = futures_util::stream::unfold(
            (first.into_iter(), receiver, replayed, stop, live),
            |(mut first, mut receiver, replayed, mut stop, live)| async move {
                if let Some(m) = first.next() {
                    let event = live.event(&m);
                    return Some((Ok(event), (first, receiver, replayed, stop, live)));
                }
                loop {
                    let message = tokio::select! {
                        _ = stop.wait_for(|s| *s) => return None,
                        m = receiver.recv() => m,
                    };
                    match message {
                        // Already sent from the log.
                        Ok(m) if m.seq.is_some_and(|seq| seq <= replayed) => continue,
                        Ok(m) => {
                            let event = live.event(&m);
                            return Some((Ok(event), (first, receiver, replayed, stop, live)));
                        }
                        // Fell behind: the page reloads what it shows.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let event = Event::default().event("resync").data("{}");
                            return Some((Ok(event), (first, receiver, replayed, stop, live)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        );
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
    }

    fn event(&self, m: &Message) -> Event {
        let event = Event::default().event(m.event).data(&m.data);
        match m.seq {
            Some(seq) => event.id(self.id(seq)),
            // Pages come back within a second of a restart.
            None => event.retry(RETRY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(messages: &[Arc<Message>]) -> Vec<Option<u64>> {
        messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn a_resumed_stream_gets_the_snapshot_and_only_the_rows_after_its_id() {
        let live = Live::new();
        live.row("event", "a".into());
        live.row("event", "b".into());
        live.snapshot("health", "{}".into());
        live.snapshot("health", "{\"x\":1}".into());
        let boot = live.inner.boot.clone();
        let (first, _, replayed) = live.open(Some(&format!("{boot}-1")));
        assert_eq!(
            seqs(&first),
            vec![None, Some(2)],
            "the latest snapshot once, then b"
        );
        assert_eq!(first[0].data, "{\"x\":1}");
        assert_eq!(replayed, 2);
        // An id of another boot (the console restarted): every row.
        let (first, _, _) = live.open(Some("otherboot-7"));
        assert_eq!(seqs(&first), vec![None, Some(1), Some(2)]);
    }

    #[test]
    fn the_log_is_bounded() {
        let live = Live::new();
        for i in 0..LOG + 10 {
            live.row("event", i.to_string());
        }
        let rows = live.rows("event");
        assert_eq!(rows.len(), LOG);
        assert_eq!(rows[0].1, "10");
    }
}
