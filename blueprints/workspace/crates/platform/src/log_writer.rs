//! Where log lines go: a buffer in memory that a thread of its own writes to stdout in
//! batches (see ADR 0015).
//!
//! Logging a line appends it to the buffer under a short lock and returns: no system call
//! and, but for the first line of a batch, no wake-up of another thread on the request's
//! path. The writer thread wakes at a batch's first line, waits [`FLUSH_EVERY`] more,
//! takes the whole buffer and writes it with one call. So a request never waits on stdout,
//! nor on a log collector that reads it slowly, and a busy process makes one write every
//! few milliseconds rather than one per line. An idle process's writer sleeps.
//!
//! Nothing is dropped: once [`MAX_WAITING`] bytes wait (stdout is stuck), a logger waits
//! for the writer as it would have waited on stdout. Dropping the [`Flusher`] writes out
//! what is waiting and stops the thread; a line logged after that is written to stdout
//! directly. A process killed outright loses at most the last [`FLUSH_EVERY`] of lines,
//! but never an `ERROR` line: that one is written before its logger returns, behind the
//! lines waiting, since the error that comes before a crash is the line worth keeping.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a line may wait in memory before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// How many bytes may wait before loggers wait for the writer.
pub const MAX_WAITING: usize = 4 << 20;

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    closed: bool,
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Where batches go. Whoever writes takes it before letting the buffer go, so what
    /// reaches stdout is in the order it was logged.
    sink: Mutex<Box<dyn Write + Send>>,
    /// The writer waits on it between batches; closing wakes it at once.
    batch: Condvar,
    /// Loggers wait on it while the buffer is full.
    room: Condvar,
    max_waiting: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sink(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writing end, handed to `tracing_subscriber::fmt::layer().with_writer(..)`: cheap
/// to clone, one lock per line.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
    /// Write this line and those waiting now rather than with the next batch.
    at_once: bool,
}

/// Owns the writer thread: dropping it writes out every waiting line and stops it.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Lines written through the returned [`LogWriter`] reach stdout within [`FLUSH_EVERY`].
pub fn stdout() -> (LogWriter, Flusher) {
    to(io::stdout(), FLUSH_EVERY, MAX_WAITING)
}

/// Batches lines into `sink`, written `every` after the first line of a batch, with at most
/// `max_waiting` bytes held.
fn to<W: Write + Send + 'static>(
    sink: W,
    every: Duration,
    max_waiting: usize,
) -> (LogWriter, Flusher) {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Buffer::default()),
        sink: Mutex::new(Box::new(sink)),
        batch: Condvar::new(),
        room: Condvar::new(),
        max_waiting,
    });
    let writer = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut batch = Vec::new();
            loop {
                let (closed, mut sink) = {
                    // Asleep until a line comes (the logger that finds the buffer empty
                    // wakes it), then a little longer, so the batch gathers more.
                    let buffer = writer
                        .batch
                        .wait_while(writer.lock(), |b| b.bytes.is_empty() && !b.closed)
                        .unwrap_or_else(|e| e.into_inner());
                    let (mut buffer, _) = writer
                        .batch
                        .wait_timeout_while(buffer, every, |b| !b.closed)
                        .unwrap_or_else(|e| e.into_inner());
                    std::mem::swap(&mut batch, &mut buffer.bytes);
                    (buffer.closed, writer.sink())
                };
                writer.room.notify_all();
                if !batch.is_empty() {
                    // Nowhere to report a failed write but the log itself: the lines are
                    // dropped, and logging goes on.
                    let _ = sink.write_all(&batch).and_then(|()| sink.flush());
                    batch.clear();
                }
                drop(sink);
                if closed {
                    return;
                }
            }
        })
        .expect("the log writer thread starts");
    (
        LogWriter {
            shared: shared.clone(),
            at_once: false,
        },
        Flusher {
            shared,
            thread: Some(thread),
        },
    )
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.shared;
        let mut buffer = shared.lock();
        if !self.at_once {
            buffer = shared
                .room
                .wait_while(buffer, |b| {
                    !b.closed
                        && !b.bytes.is_empty()
                        && b.bytes.len() + line.len() > shared.max_waiting
                })
                .unwrap_or_else(|e| e.into_inner());
        }
        if self.at_once || buffer.closed {
            // Written now, behind the lines waiting (after the flusher is gone no thread
            // is left to write for us). The sink is taken before the buffer is let go: a
            // batch the writer thread took earlier is written first.
            buffer.bytes.extend_from_slice(line);
            let waiting = std::mem::take(&mut buffer.bytes);
            let mut sink = shared.sink();
            drop(buffer);
            shared.room.notify_all();
            sink.write_all(&waiting).and_then(|()| sink.flush())?;
            return Ok(line.len());
        }
        let first = buffer.bytes.is_empty();
        buffer.bytes.extend_from_slice(line);
        drop(buffer);
        if first {
            // One wake-up per batch, not per line.
            shared.batch.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LogWriter {
            shared: self.shared.clone(),
            at_once: *meta.level() == tracing::Level::ERROR,
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.batch.notify_all();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink the test can read, and hold shut to stand for a stuck stdout.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        stuck: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _open = self.stuck.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(bytes);
            *self.writes.lock().unwrap() += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_in_each_threads_order_in_few_writes() {
        let sink = Sink::default();
        let (writer, flusher) = to(sink.clone(), Duration::from_millis(20), MAX_WAITING);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        writer
                            .write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(flusher);
        let text = sink.text();
        let mut next = [0; 4];
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            assert_eq!(words.len(), 4, "a torn line: {line:?}");
            let (t, i): (usize, usize) = (words[1].parse().unwrap(), words[3].parse().unwrap());
            assert_eq!(i, next[t], "thread {t} out of order");
            next[t] += 1;
        }
        assert_eq!(next, [2000; 4], "every line arrives once");
        let writes = *sink.writes.lock().unwrap();
        assert!(
            writes < 8000 / 10,
            "{writes} writes for 8000 lines: not batched"
        );
    }

    #[test]
    fn a_line_is_written_within_the_interval_without_a_flush() {
        let sink = Sink::default();
        let (mut writer, _flusher) = to(sink.clone(), Duration::from_millis(20), MAX_WAITING);
        writer.write_all(b"started\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.text(), "started\n");
    }

    #[test]
    fn an_error_line_is_written_before_its_logger_returns_behind_the_lines_waiting() {
        use tracing_subscriber::layer::SubscriberExt;

        let sink = Sink::default();
        // Long enough that no batch is written during the test.
        let (writer, flusher) = to(sink.clone(), Duration::from_secs(3600), MAX_WAITING);
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .with_writer(writer),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("accepted");
            tracing::warn!("retrying");
            assert_eq!(sink.text(), "", "an info or warn line waits for its batch");
            tracing::error!("giving up");
            assert_eq!(
                sink.text(),
                " INFO accepted\n WARN retrying\nERROR giving up\n",
                "the error line and those before it, in order, once error! returns"
            );
            tracing::info!("after");
        });
        drop(flusher);
        assert!(
            sink.text().ends_with("ERROR giving up\n INFO after\n"),
            "{:?}",
            sink.text()
        );
    }

    #[test]
    fn a_stuck_stdout_holds_loggers_back_once_the_buffer_is_full_and_loses_nothing() {
        let sink = Sink::default();
        let stuck = sink.stuck.lock().unwrap();
        let (writer, flusher) = to(sink.clone(), Duration::from_millis(1), 100);
        let logged = Arc::new(Mutex::new(0usize));
        let logger = {
            let (mut writer, logged) = (writer.clone(), logged.clone());
            std::thread::spawn(move || {
                for i in 0..50 {
                    writer
                        .write_all(format!("line {i:05}\n").as_bytes())
                        .unwrap();
                    *logged.lock().unwrap() += 1;
                }
            })
        };
        // The writer holds one batch in the stuck write; at most 100 bytes more may wait.
        std::thread::sleep(Duration::from_millis(200));
        let held_back = *logged.lock().unwrap();
        // Opened before asserting: a failure must not leave the writer stuck for good.
        drop(stuck);
        logger.join().unwrap();
        drop(flusher);
        assert!(
            held_back < 50,
            "the logger never waited: {held_back} lines logged"
        );
        let text = sink.text();
        let expected: String = (0..50).map(|i| format!("line {i:05}\n")).collect();
        assert_eq!(text, expected);
    }
}
