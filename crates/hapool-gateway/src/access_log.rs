//! The access log: one line per HTTP request answered and per TCP
//! connection closed, appended to a file.
//!
//! Lines are in logfmt (`key=value`, a value with spaces or quotes in
//! double quotes), so that log shippers parse them without a pattern:
//!
//! ```text
//! time=2026-12-01T20:30:00.123Z kind=http client=127.0.0.1 pool=web request="GET /4k HTTP/1.1" status=200 member=00000002 member_address=127.0.0.1:8082 attempts=1 length=4096 head_ms=0.412
//! time=2026-12-01T20:30:01.007Z kind=tcp client=127.0.0.1:50412 pool=echo member=00000001 member_address=127.0.0.1:7001 sent=12 received=12 duration_ms=1507.310
//! ```
//!
//! An HTTP line is written when the answer's head goes to the client:
//! `head_ms` is the time from the request's head to the answer's, and
//! `length` the answer's `Content-Length` (`-` when it is streamed). An
//! answer the gateway made itself (no member could serve, a member that
//! did not answer in time) has `member=-`. A request given up before its
//! answer's head was ready (its client reset its HTTP/2 stream or closed
//! the connection, or the shutdown's grace ran out) has its line when it
//! is dropped, with `status=-` and the time it waited as `head_ms`.
//! (An HTTP/1.1 client that goes away is noticed only when its answer is
//! written: that line has the member's status.) Requests refused before they
//! are whole (a head over `max_header_bytes`, a malformed one) and
//! connections refused at `max_connections` have no line: they are
//! counted in `hapool_gateway_limit_hits_total`.
//!
//! Workers hand lines to a thread of the log's own, which writes what
//! has come every [`WRITE_EVERY`], so a worker never waits for the disk
//! and never wakes the writer. When the disk cannot keep up (more than
//! [`QUEUE_LINES`] waiting) or a write fails (a full disk), lines are
//! dropped and counted in `hapool_gateway_access_log_dropped_total`; a
//! failed write is logged once, naming the file, until writes succeed
//! again. The file is opened for appending, and opened again within
//! [`LOOK_EVERY`] when a rotation has renamed or removed it: neither a
//! rotation that moves the file (logrotate's default) nor one that
//! truncates it in place (`copytruncate`) needs a signal.
//!
//! A reload can start, change or stop the log ([`LogSlot`]): requests
//! answered from then on go to the new file, and the writer of the old
//! one ends once it has written what it was sent.

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hapool_wire::PoolElementId;
use metrics::{Counter, counter};
use tracing::{error, info};

/// Lines waiting for the writer before new ones are dropped: at
/// [`WRITE_EVERY`], room for 1.6 million lines a second.
pub(crate) const QUEUE_LINES: usize = 32 * 1024;

/// How often the writer takes the lines waiting and writes them.
const WRITE_EVERY: Duration = Duration::from_millis(20);

/// How often the writer looks whether the file was rotated away.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Where workers send their lines.
#[derive(Debug)]
pub(crate) struct AccessLog {
    lines: SyncSender<String>,
    dropped: Counter,
}

impl AccessLog {
    /// Opens `path` for appending (creating it) and starts the writer
    /// thread, which ends once every `AccessLog` is dropped and the lines
    /// sent before are written.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (lines, queue) = sync_channel(QUEUE_LINES);
        let dropped = counter!("hapool_gateway_access_log_dropped_total");
        let writer = Writer {
            path: path.to_owned(),
            file,
            batch: Vec::with_capacity(Writer::BATCH_BYTES),
            lines: 0,
            dropped: dropped.clone(),
            failing: false,
            looked: Instant::now(),
            reopen_failing: false,
        };
        std::thread::Builder::new()
            .name("hapool-access-log".into())
            .spawn(move || writer.run(queue))?;
        Ok(Self { lines, dropped })
    }

    /// Logs an HTTP request whose answer's head is ready.
    pub(crate) fn http(&self, line: &HttpLine<'_>) {
        self.send(format_line("http", |out| line.fields(out)));
    }

    /// Logs a TCP connection that has closed.
    pub(crate) fn tcp(&self, line: &TcpLine<'_>) {
        self.send(format_line("tcp", |out| line.fields(out)));
    }

    fn send(&self, line: String) {
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.increment(1);
            }
        }
    }
}

/// The access log in use, if any, with its file: set at the start, and
/// changed by a reload while the workers log to it.
#[derive(Debug, Default)]
pub(crate) struct LogSlot {
    /// Whether there is a log: what every request looks at first.
    on: AtomicBool,
    current: RwLock<Option<(PathBuf, AccessLog)>>,
}

impl LogSlot {
    /// Whether requests are logged.
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Runs `log` with the access log, when there is one.
    pub(crate) fn with(&self, log: impl FnOnce(&AccessLog)) {
        if !self.is_on() {
            return;
        }
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, access_log)) = current.as_ref() {
            log(access_log);
        }
    }

    /// The file logged to.
    pub(crate) fn path(&self) -> Option<PathBuf> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|(path, _)| path.clone())
    }

    /// Logs to `log` (opened from its path) from now on, or to none; the
    /// log before, if any, is written out by its writer, which then ends.
    pub(crate) fn set(&self, log: Option<(PathBuf, AccessLog)>) {
        let on = log.is_some();
        let before = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            log,
        );
        self.on.store(on, Ordering::Relaxed);
        drop(before);
    }
}

/// What an HTTP line says.
#[derive(Debug)]
pub(crate) struct HttpLine<'a> {
    pub(crate) client: &'a str,
    pub(crate) pool: &'a str,
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    pub(crate) version: http::Version,
    /// The answer's status; none for a request given up unanswered.
    pub(crate) status: Option<u16>,
    /// The member that answered, with its address.
    pub(crate) member: Option<(PoolElementId, SocketAddr)>,
    /// The members that failed the request, plus the one that answered
    /// (a hedge that lost the race is not counted).
    pub(crate) attempts: u32,
    pub(crate) length: Option<u64>,
    pub(crate) head: Duration,
}

impl HttpLine<'_> {
    fn fields(&self, out: &mut String) -> fmt::Result {
        write!(out, " client=")?;
        value(out, self.client)?;
        write!(out, " pool=")?;
        value(out, self.pool)?;
        write!(out, " request=")?;
        value(
            out,
            &format!("{} {} {:?}", self.method, self.target, self.version),
        )?;
        write!(out, " status=")?;
        or_dash(out, self.status)?;
        member(out, self.member)?;
        write!(out, " attempts={} length=", self.attempts)?;
        or_dash(out, self.length)?;
        write!(out, " head_ms={:.3}", millis(self.head))
    }
}

/// What a TCP line says.
#[derive(Debug)]
pub(crate) struct TcpLine<'a> {
    pub(crate) client: SocketAddr,
    pub(crate) pool: &'a str,
    pub(crate) member: Option<(PoolElementId, SocketAddr)>,
    /// Bytes from the client to the member, and back (unknown when the
    /// connection ended with an error).
    pub(crate) sent: Option<u64>,
    pub(crate) received: Option<u64>,
    pub(crate) duration: Duration,
}

impl TcpLine<'_> {
    fn fields(&self, out: &mut String) -> fmt::Result {
        write!(out, " client={} pool=", self.client)?;
        value(out, self.pool)?;
        member(out, self.member)?;
        write!(out, " sent=")?;
        or_dash(out, self.sent)?;
        write!(out, " received=")?;
        or_dash(out, self.received)?;
        write!(out, " duration_ms={:.3}", millis(self.duration))
    }
}

/// A number, or `-` when it is not known.
fn or_dash(out: &mut String, n: Option<impl fmt::Display>) -> fmt::Result {
    match n {
        Some(n) => write!(out, "{n}"),
        None => {
            out.push('-');
            Ok(())
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn member(out: &mut String, member: Option<(PoolElementId, SocketAddr)>) -> fmt::Result {
    match member {
        Some((id, address)) => write!(out, " member={id} member_address={address}"),
        None => write!(out, " member=- member_address=-"),
    }
}

/// A line: the time, the kind, then `fields`.
fn format_line(kind: &str, fields: impl FnOnce(&mut String) -> fmt::Result) -> String {
    let mut out = String::with_capacity(256);
    let time = humantime::format_rfc3339_millis(SystemTime::now());
    // Writing to a String cannot fail.
    let _ = write!(out, "time={time} kind={kind}");
    let _ = fields(&mut out);
    out.push('\n');
    out
}

/// `text` as a logfmt value: bare when it is plain, else quoted, with
/// quotes and backslashes escaped and control characters written as
/// `\xNN`, so that what a client sent cannot start a line or a field of
/// its own.
fn value(out: &mut String, text: &str) -> fmt::Result {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if plain {
        out.push_str(text);
        return Ok(());
    }
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => write!(out, "\\x{:02x}", u32::from(c))?,
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(())
}

/// The thread that writes the lines.
struct Writer {
    path: PathBuf,
    file: File,
    /// Lines taken from the queue, not yet written.
    batch: Vec<u8>,
    lines: u64,
    dropped: Counter,
    /// The last write failed (reported once until one succeeds).
    failing: bool,
    /// When the writer last looked whether the file was rotated away.
    looked: Instant,
    /// The last reopening failed (reported once until one succeeds).
    reopen_failing: bool,
}

impl Writer {
    /// A batch is written once it holds this much, or the queue is empty.
    const BATCH_BYTES: usize = 64 * 1024;

    fn run(mut self, queue: Receiver<String>) {
        loop {
            // Never waiting on the queue, the writer is never woken by a
            // line: a wake-up per line cost more than the line itself.
            std::thread::sleep(WRITE_EVERY);
            if self.looked.elapsed() >= LOOK_EVERY {
                self.looked = Instant::now();
                self.reopen_if_rotated();
            }
            loop {
                match queue.try_recv() {
                    Ok(line) => {
                        self.take(&line);
                        if self.batch.len() >= Self::BATCH_BYTES {
                            self.write_batch();
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.write_batch();
                        return;
                    }
                }
            }
            self.write_batch();
        }
    }

    /// Opens the file at the path again when the one open is no longer
    /// there (renamed or removed by a rotation), so that new lines go to
    /// the new file.
    fn reopen_if_rotated(&mut self) {
        let open = self.file.metadata().map(|m| (m.dev(), m.ino()));
        let at_path = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        if let (Ok(open), Ok(at_path)) = (&open, &at_path)
            && open == at_path
        {
            return;
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(file) => {
                // What is waiting belongs to the file it was taken for.
                self.write_batch();
                self.file = file;
                self.reopen_failing = false;
                info!(path = %self.path.display(), "access log reopened after a rotation");
            }
            Err(e) => {
                if !self.reopen_failing {
                    self.reopen_failing = true;
                    error!(path = %self.path.display(), error = %e, "cannot reopen the access log after a rotation; writing on to the file open");
                }
            }
        }
    }

    fn take(&mut self, line: &str) {
        self.batch.extend_from_slice(line.as_bytes());
        self.lines += 1;
    }

    /// Writes the batch; a failure is reported once, until a write
    /// succeeds again, and the batch's lines are counted as dropped.
    fn write_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        match self.file.write_all(&self.batch) {
            Ok(()) if self.failing => {
                self.failing = false;
                info!(path = %self.path.display(), "the access log is written again");
            }
            Ok(()) => {}
            Err(e) => {
                self.dropped.increment(self.lines);
                if !self.failing {
                    self.failing = true;
                    error!(path = %self.path.display(), error = %e, "cannot write the access log; lines are dropped until it can");
                }
            }
        }
        self.batch.clear();
        self.lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_value(text: &str) -> String {
        let mut out = String::new();
        value(&mut out, text).unwrap();
        out
    }

    #[test]
    fn values_are_quoted_and_escaped_only_when_needed() {
        assert_eq!(as_value("web"), "web");
        assert_eq!(as_value("/a/b?c"), "/a/b?c");
        assert_eq!(as_value(""), "\"\"");
        assert_eq!(as_value("GET / HTTP/1.1"), "\"GET / HTTP/1.1\"");
        assert_eq!(as_value("a=b"), "\"a=b\"");
        assert_eq!(as_value("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(as_value("back\\slash"), "\"back\\\\slash\"");
        // A client's newline cannot start a line of its own.
        assert_eq!(as_value("x\ntime=0"), "\"x\\x0atime=0\"");
    }

    #[test]
    fn an_http_line_names_request_member_and_times() {
        let line = format_line("http", |out| {
            HttpLine {
                client: "192.0.2.7",
                pool: "web",
                method: "GET",
                target: "/4k",
                version: http::Version::HTTP_11,
                status: Some(200),
                member: Some((PoolElementId(2), "127.0.0.1:8082".parse().unwrap())),
                attempts: 1,
                length: Some(4096),
                head: Duration::from_micros(412),
            }
            .fields(out)
        });
        assert!(line.starts_with("time=") && line.ends_with('\n'), "{line}");
        let rest = line.split_once(' ').unwrap().1.trim_end();
        assert_eq!(
            rest,
            "kind=http client=192.0.2.7 pool=web request=\"GET /4k HTTP/1.1\" status=200 \
             member=00000002 member_address=127.0.0.1:8082 attempts=1 length=4096 head_ms=0.412"
        );
    }

    #[test]
    fn lines_reach_the_file_in_order_and_the_writer_ends_with_the_log() {
        let dir = std::env::temp_dir().join(format!("hapool-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "kept\n").unwrap();
        let log = AccessLog::open(&path).unwrap();
        for n in 0..100u64 {
            log.tcp(&TcpLine {
                client: "192.0.2.7:4000".parse().unwrap(),
                pool: "echo",
                member: None,
                sent: Some(n),
                received: None,
                duration: Duration::from_millis(1),
            });
        }
        drop(log);
        // The writer drains and exits once the log is dropped.
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 101 || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 101, "{text}");
        assert_eq!(lines[0], "kept", "the file is appended to");
        for (n, line) in lines[1..].iter().enumerate() {
            assert!(line.contains(&format!(" sent={n} received=- ")), "{line}");
            assert!(line.contains(" member=- member_address=- "), "{line}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_disk_drops_lines_until_writes_succeed_again() {
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let mut writer = Writer {
            path: "/dev/full".into(),
            file: full,
            batch: Vec::new(),
            lines: 0,
            dropped: Counter::noop(),
            failing: false,
            looked: Instant::now(),
            reopen_failing: false,
        };
        writer.take("lost 1\n");
        writer.take("lost 2\n");
        writer.write_batch();
        assert!(writer.failing, "the failure is noticed (and logged once)");
        assert!(
            writer.batch.is_empty() && writer.lines == 0,
            "failed lines are not retried"
        );
        // Space again: the next lines are written, the lost ones are not.
        let path = std::env::temp_dir().join(format!("hapool-access-full-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        writer.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.take("kept\n");
        writer.write_batch();
        assert!(!writer.failing);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_rotated_away_or_removed_is_followed_by_a_new_one() {
        let dir = std::env::temp_dir().join(format!("hapool-access-rot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let rotated = dir.join("access.log.1");
        let log = AccessLog::open(&path).unwrap();
        let line = |n: u64| TcpLine {
            client: "192.0.2.7:4000".parse().unwrap(),
            pool: "echo",
            member: None,
            sent: Some(n),
            received: None,
            duration: Duration::ZERO,
        };
        let until = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !done() {
                assert!(Instant::now() < deadline, "never: {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let has = |file: &Path, n: u64| {
            std::fs::read_to_string(file).is_ok_and(|t| t.contains(&format!(" sent={n} ")))
        };
        log.tcp(&line(1));
        until("the first line written", &|| has(&path, 1));
        std::fs::rename(&path, &rotated).unwrap();
        // Within a look, the writer opens a new file at the path.
        until("a new file at the path", &|| path.exists());
        log.tcp(&line(2));
        until("the second line in the new file", &|| has(&path, 2));
        assert!(has(&rotated, 1) && !has(&rotated, 2));
        // A file removed is followed the same way.
        std::fs::remove_file(&path).unwrap();
        until("a file again at the path", &|| path.exists());
        log.tcp(&line(3));
        until("the third line in it", &|| has(&path, 3));
        drop(log);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_an_error() {
        let missing = std::env::temp_dir()
            .join(format!("hapool-no-dir-{}", std::process::id()))
            .join("access.log");
        assert!(AccessLog::open(&missing).is_err());
    }
}
