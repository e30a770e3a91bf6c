//! Where log lines go: a buffer in memory that a thread of its own writes to stdout in
//! batches (see ADR 0015).
//!
//! Logging a line appends it to the buffer under a short lock and returns: no system call
//! and, but for the first line of a batch, no wake-up of another thread on the request's
//! path. The writer thread wakes at a batch's first line, waits [`FLUSH_EVERY`] more,
//! takes the whole buffer and writes it with one call. So a request never waits on stdout,
//! nor on a log collector that reads it slowly, and a busy process makes one write every
//! few milliseconds rather than one per line. An idle process's writer sleeps. Only that
//! thread writes to stdout, so lines reach it in the order they were logged.
//!
//! Logging never holds a request up for long, whatever stdout does. Once [`MAX_WAITING`]
//! bytes wait (stdout is stuck, or far slower than the process logs), a new line is dropped
//! and counted (`log_lines_dropped_total`), and the writer reports how many were dropped
//! once a write succeeds again. An `ERROR` line wakes the writer at once and its logger
//! waits until it is written, for [`ERROR_WAIT`] at most: a process killed outright loses
//! at most the last [`FLUSH_EVERY`] of lines, but not the error that came before its crash,
//! while a stuck stdout costs an error's logger [`ERROR_WAIT`] and nobody else anything.
//! Dropping the [`Flusher`] writes out what is waiting and stops the thread; a line logged
//! after that is written to stdout directly.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a line may wait in memory before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// How many bytes may wait; a line that would pass it is dropped.
pub const MAX_WAITING: usize = 4 << 20;
/// How long an `ERROR` line's logger waits for it to be written, at most.
pub const ERROR_WAIT: Duration = Duration::from_millis(100);
/// Lines dropped because stdout could not take them.
pub const LOG_LINES_DROPPED: &str = "log_lines_dropped_total";

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    closed: bool,
    /// Bytes ever appended, and ever taken to be written: an `ERROR` line's logger waits
    /// until `written` passes the end of its line.
    appended: u64,
    written: u64,
    /// An `ERROR` line waits: the writer writes without waiting for the batch to gather.
    urgent: bool,
    /// Lines dropped since the writer last reported it.
    dropped: u64,
}

/// What the writer does with the number of lines dropped, once a write succeeds again.
type Report = Box<dyn Fn(u64) + Send + Sync>;

struct Shared {
    buffer: Mutex<Buffer>,
    /// Written by the writer thread only, until the [`Flusher`] is dropped.
    sink: Mutex<Box<dyn Write + Send>>,
    /// The writer waits on it between batches; closing wakes it at once.
    batch: Condvar,
    /// Signalled after every write, for the `ERROR` lines waiting.
    wrote: Condvar,
    max_waiting: usize,
    report: Report,
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
    /// Wake the writer at once and wait (a little) for this line to be written.
    at_once: bool,
}

/// Owns the writer thread: dropping it writes out every waiting line and stops it.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Lines written through the returned [`LogWriter`] reach stdout within [`FLUSH_EVERY`].
pub fn stdout() -> (LogWriter, Flusher) {
    let report: Report = Box::new(|dropped| {
        tracing::warn!(
            dropped,
            "log lines were dropped while stdout could not take them"
        );
    });
    to(io::stdout(), FLUSH_EVERY, MAX_WAITING, report)
}

/// Batches lines into `sink`, written `every` after the first line of a batch, with at most
/// `max_waiting` bytes held; `report` is told how many lines were dropped.
fn to<W: Write + Send + 'static>(
    sink: W,
    every: Duration,
    max_waiting: usize,
    report: Report,
) -> (LogWriter, Flusher) {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Buffer::default()),
        sink: Mutex::new(Box::new(sink)),
        batch: Condvar::new(),
        wrote: Condvar::new(),
        max_waiting,
        report,
    });
    let writer = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_batches(&writer, every))
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

/// The writer thread: takes what waits and writes it, until the buffer is closed.
fn write_batches(shared: &Shared, every: Duration) {
    let mut batch = Vec::new();
    loop {
        let (closed, upto) = {
            // Asleep until a line comes (the logger that finds the buffer empty wakes it),
            // then a little longer, so the batch gathers more, unless an error waits.
            let buffer = shared
                .batch
                .wait_while(shared.lock(), |b| b.bytes.is_empty() && !b.closed)
                .unwrap_or_else(|e| e.into_inner());
            let (mut buffer, _) = shared
                .batch
                .wait_timeout_while(buffer, every, |b| !b.closed && !b.urgent)
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut batch, &mut buffer.bytes);
            buffer.urgent = false;
            (buffer.closed, buffer.appended)
        };
        // Loggers go on appending (or, once the buffer is full, dropping) meanwhile.
        let written = if batch.is_empty() {
            true
        } else {
            let mut sink = shared.sink();
            let result = sink.write_all(&batch).and_then(|()| sink.flush());
            if result.is_err() {
                // Nowhere to report a failed write but the log itself: its lines count as
                // dropped, and logging goes on.
                let lines = batch.iter().filter(|&&b| b == b'\n').count() as u64;
                shared.lock().dropped += lines;
                metrics::counter!(LOG_LINES_DROPPED).increment(lines);
            }
            batch.clear();
            result.is_ok()
        };
        let dropped = {
            let mut buffer = shared.lock();
            buffer.written = upto;
            if written {
                std::mem::take(&mut buffer.dropped)
            } else {
                0
            }
        };
        shared.wrote.notify_all();
        if dropped > 0 {
            (shared.report)(dropped);
        }
        if closed {
            return;
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.shared;
        let mut buffer = shared.lock();
        if buffer.closed {
            // No thread is left to write for us: written now, behind what was written.
            let mut sink = shared.sink();
            drop(buffer);
            sink.write_all(line).and_then(|()| sink.flush())?;
            return Ok(line.len());
        }
        if !buffer.bytes.is_empty() && buffer.bytes.len() + line.len() > shared.max_waiting {
            // stdout cannot keep up: the line is dropped rather than the logger held.
            buffer.dropped += 1;
            drop(buffer);
            metrics::counter!(LOG_LINES_DROPPED).increment(1);
            return Ok(line.len());
        }
        let first = buffer.bytes.is_empty();
        buffer.bytes.extend_from_slice(line);
        buffer.appended += line.len() as u64;
        if self.at_once {
            let end = buffer.appended;
            buffer.urgent = true;
            shared.batch.notify_one();
            // The buffer's lock is let go while waiting: other loggers go on.
            let _written = shared
                .wrote
                .wait_timeout_while(buffer, ERROR_WAIT, |b| b.written < end && !b.closed)
                .unwrap_or_else(|e| e.into_inner());
            return Ok(line.len());
        }
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
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.shared.wrote.notify_all();
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
        let (writer, flusher) = to(
            sink.clone(),
            Duration::from_millis(20),
            MAX_WAITING,
            no_report(),
        );
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
        let (mut writer, _flusher) = to(
            sink.clone(),
            Duration::from_millis(20),
            MAX_WAITING,
            no_report(),
        );
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
        let (writer, flusher) = to(
            sink.clone(),
            Duration::from_secs(3600),
            MAX_WAITING,
            no_report(),
        );
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

    fn no_report() -> Report {
        Box::new(|_| {})
    }

    /// A stuck stdout holds no logger back: lines beyond the buffer are dropped and
    /// counted, an ERROR line's logger waits ERROR_WAIT at most, and once stdout takes
    /// lines again the writer reports how many were dropped.
    #[test]
    fn a_stuck_stdout_never_holds_loggers_back_and_what_it_drops_is_counted_and_reported() {
        let sink = Sink::default();
        let stuck = sink.stuck.lock().unwrap();
        let reported = Arc::new(Mutex::new(Vec::new()));
        let report: Report = {
            let reported = reported.clone();
            Box::new(move |dropped| reported.lock().unwrap().push(dropped))
        };
        let (writer, flusher) = to(sink.clone(), Duration::from_millis(1), 100, report);
        let metrics = crate::metrics::handle();
        let (done, finished) = std::sync::mpsc::channel();
        let logger = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                let mut plain = writer.clone();
                let mut error = LogWriter {
                    at_once: true,
                    ..writer
                };
                // The writer takes this line and sits in the stuck write with it.
                plain.write_all(b"first\n").unwrap();
                std::thread::sleep(Duration::from_millis(50));
                // An error with room for it: its logger waits a little, not for stdout.
                error.write_all(b"ERROR while stuck\n").unwrap();
                for i in 0..50 {
                    plain
                        .write_all(format!("line {i:05}\n").as_bytes())
                        .unwrap();
                }
                done.send(()).unwrap();
            })
        };
        // Bounded so that a logger held back fails the test instead of hanging it; the
        // writer thread sits in the stuck write all along.
        let returned = finished.recv_timeout(Duration::from_secs(10)).is_ok();
        // Opened before asserting: a failure must not leave the writer stuck for good.
        drop(stuck);
        logger.join().unwrap();
        assert!(returned, "a logger waited for the stuck stdout");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while reported.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(flusher);
        let dropped: u64 = reported.lock().unwrap().iter().sum();
        let written = sink.text().lines().count() as u64;
        assert!(dropped > 0, "nothing was dropped: {:?}", sink.text());
        assert_eq!(
            written + dropped,
            52,
            "every line either written or counted as dropped"
        );
        assert!(
            sink.text().starts_with("first\nERROR while stuck\n"),
            "{:?}",
            sink.text()
        );
        let counted = metrics.render();
        assert!(
            counted.lines().any(|l| l.starts_with(LOG_LINES_DROPPED)),
            "{counted}"
        );
    }
}
