//! Where log lines go: stderr, with access-log lines written off the request path.
//!
//! An access-log line ([`crate::accesslog`], or any event with target `access`) is
//! appended to an in-memory buffer; a background thread writes whatever has accumulated
//! with one `write` per batch. While lines keep coming the thread writes a batch every
//! [`BATCH_INTERVAL`] without being woken (no syscall on the request path); once the
//! buffer is empty it sleeps until the next line wakes it. Any other line first writes out
//! the pending access lines, then itself, so the order of lines is kept. [`flush`] writes
//! out what is pending (called before the process exits). When stderr cannot keep up and
//! the buffer passes [`MAX_PENDING`], the request that finds it full writes the batch
//! itself: lines are never dropped and memory stays bounded.

use std::io::{self, Write};
use std::sync::OnceLock;

use parking_lot::{Condvar, Mutex};
use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// Buffered bytes above which a producer writes the batch itself.
const MAX_PENDING: usize = 4 << 20;

/// How long the writer waits between batches while lines keep coming.
const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

struct Pending {
    /// Access lines not yet written.
    lines: Vec<u8>,
    /// The writer is asleep until woken (set and read under the lock: no lost wake-up).
    idle: bool,
}

struct Sink {
    /// Access lines not yet written, and whether the writer needs a wake-up.
    pending: Mutex<Pending>,
    /// Signalled when `pending` turns non-empty.
    wake: Condvar,
    /// Held while writing to stderr: batches and direct lines never interleave.
    out: Mutex<()>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("sluice-log".into())
            .spawn(writer_loop);
        if let Err(e) = started {
            // Without the thread every access line is written by its request (below).
            eprintln!("sluice: cannot start the log writer thread: {e}");
        }
        Sink {
            pending: Mutex::new(Pending {
                lines: Vec::with_capacity(64 << 10),
                idle: false,
            }),
            wake: Condvar::new(),
            out: Mutex::new(()),
        }
    })
}

fn writer_loop() {
    let s = sink();
    let mut batch = Vec::with_capacity(64 << 10);
    loop {
        {
            let mut p = s.pending.lock();
            while p.lines.is_empty() {
                p.idle = true;
                s.wake.wait(&mut p);
                p.idle = false;
            }
        }
        {
            let _out = s.out.lock();
            std::mem::swap(&mut s.pending.lock().lines, &mut batch);
            let _ = io::stderr().lock().write_all(&batch);
        }
        batch.clear();
        if batch.capacity() > MAX_PENDING {
            batch.shrink_to(64 << 10);
        }
        std::thread::sleep(BATCH_INTERVAL);
    }
}

/// Writes out pending access-log lines now.
pub fn flush() {
    let s = sink();
    let _out = s.out.lock();
    let batch = std::mem::take(&mut s.pending.lock().lines);
    let _ = io::stderr().lock().write_all(&batch);
}

/// The `MakeWriter` for the log subscriber.
#[derive(Clone, Copy, Default)]
pub struct LogSink;

/// One line's writer.
pub enum LineWriter {
    /// An access-log line: buffered.
    Buffered,
    /// Anything else: pending lines, then this one, to stderr.
    Direct,
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter::Direct
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        if meta.target() == "access" {
            LineWriter::Buffered
        } else {
            LineWriter::Direct
        }
    }
}

/// Queues one access-log line for the writer thread.
pub fn write_access(line: &[u8]) {
    let s = sink();
    let mut p = s.pending.lock();
    if p.lines.len() + line.len() > MAX_PENDING {
        drop(p);
        let _out = s.out.lock();
        let batch = std::mem::take(&mut s.pending.lock().lines);
        let mut err = io::stderr().lock();
        let _ = err.write_all(&batch);
        let _ = err.write_all(line);
        return;
    }
    p.lines.extend_from_slice(line);
    let wake = p.idle;
    p.idle = false;
    drop(p);
    if wake {
        s.wake.notify_one();
    }
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LineWriter::Buffered => write_access(buf),
            LineWriter::Direct => {
                let s = sink();
                let _out = s.out.lock();
                let batch = std::mem::take(&mut s.pending.lock().lines);
                let mut err = io::stderr().lock();
                err.write_all(&batch)?;
                err.write_all(buf)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
