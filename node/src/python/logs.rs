//! What an app's processes write to stdout and stderr, and their crash reports, kept per app
//! on this node for `rebeam logs`: bounded, newest kept, followable. The node's own stdout
//! and stderr still get every byte (the Python side writes through before it calls here).

use super::host::PyProcess;
use crate::runtime::{Pid, Reason};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Newest entries kept per app.
pub const MAX_ENTRIES: usize = 10_000;
/// Bytes kept per app: entry texts plus `ENTRY_OVERHEAD` each.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Longest entry text: a longer line (or output that never ends a line) is split here, and a
/// longer crash report keeps its end, where the exception is.
pub const MAX_TEXT: usize = 64 * 1024;
/// What an entry costs besides its text (record, sequence, time, pid), for the byte bound.
const ENTRY_OVERHEAD: usize = 64;

/// Where an entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// `sys.stdout` (print).
    Stdout,
    /// `sys.stderr` (logging's default handler, warnings, printed tracebacks).
    Stderr,
    /// The crash report of a process that exited with an uncaught exception.
    Crash,
}

impl Stream {
    /// The name used on the wire and by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Crash => "crash",
        }
    }

    /// The stream a Python writer names by its file descriptor number (1 or 2).
    pub fn from_fd(fd: u8) -> Option<Stream> {
        match fd {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// One kept line of output, or one crash report.
#[derive(Debug)]
pub struct Entry {
    /// Increasing across the whole node (so a follower resumes after the last one it saw).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The process that wrote it.
    pub pid: Pid,
    /// Which stream.
    pub stream: Stream,
    /// The line, without its newline; or the whole crash report.
    pub text: String,
}

/// Sequence numbers of entries, node-wide.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// One app's kept output on this node.
pub struct AppLog {
    kept: Mutex<Kept>,
    /// Bumped after each append, so followers wake without polling.
    appended: watch::Sender<()>,
}

#[derive(Default)]
struct Kept {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
}

fn cost(text: &str) -> usize {
    text.len() + ENTRY_OVERHEAD
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Default for AppLog {
    fn default() -> Self {
        AppLog {
            kept: Mutex::new(Kept::default()),
            appended: watch::Sender::new(()),
        }
    }
}

impl AppLog {
    /// Appends `texts` as entries of `stream` written by `pid`, drops the oldest entries past
    /// the bounds, and wakes followers.
    pub fn append(&self, pid: Pid, stream: Stream, texts: impl IntoIterator<Item = String>) {
        let time_ms = now_ms();
        let mut any = false;
        {
            let mut kept = self.kept.lock();
            for text in texts {
                // Numbered under the lock: within one app, order of entries = order of seq,
                // which lets readers find their place by binary search.
                let seq = SEQ.fetch_add(1, Ordering::Relaxed) + 1;
                kept.bytes += cost(&text);
                kept.entries.push_back(Arc::new(Entry {
                    seq,
                    time_ms,
                    pid,
                    stream,
                    text,
                }));
                any = true;
            }
            while kept.entries.len() > MAX_ENTRIES || kept.bytes > MAX_BYTES {
                match kept.entries.pop_front() {
                    Some(old) => kept.bytes -= cost(&old.text),
                    None => break,
                }
            }
        }
        if any {
            self.appended.send_replace(());
        }
    }

    /// Kept entries with a sequence number above `seq`, oldest first: at most `max_entries`
    /// of them and about `max_bytes` of text (always at least one, if there is one).
    pub fn after(&self, seq: u64, max_entries: usize, max_bytes: usize) -> Vec<Arc<Entry>> {
        let kept = self.kept.lock();
        let start = kept.entries.partition_point(|e| e.seq <= seq);
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in kept.entries.range(start..) {
            if out.len() >= max_entries || (!out.is_empty() && bytes + entry.text.len() > max_bytes)
            {
                break;
            }
            bytes += entry.text.len();
            out.push(entry.clone());
        }
        out
    }

    /// Number of entries kept now.
    pub fn len(&self) -> usize {
        self.kept.lock().entries.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver that wakes after every append from now on (subscribe before reading, so
    /// nothing appended in between is missed).
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.appended.subscribe()
    }
}

static LOGS: OnceLock<Mutex<HashMap<String, Arc<AppLog>>>> = OnceLock::new();

/// The log of the app `name` on this node, created empty on first use (a follower may ask
/// before the app's first process starts here).
pub fn log_for(name: &str) -> Arc<AppLog> {
    LOGS.get_or_init(Default::default)
        .lock()
        .entry(name.to_string())
        .or_default()
        .clone()
}

/// The log of the app `name`, if one exists on this node.
pub fn find(name: &str) -> Option<Arc<AppLog>> {
    LOGS.get()?.lock().get(name).cloned()
}

/// A process's unfinished lines, one per stream, until a newline or its exit ends them.
#[derive(Default)]
pub struct Partial {
    stdout: String,
    stderr: String,
}

impl Partial {
    /// Adds `text` written to `stream`; returns the lines it completed (without newlines).
    pub fn write(&mut self, stream: Stream, text: &str) -> Vec<String> {
        let buffer = match stream {
            Stream::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        };
        let mut lines = Vec::new();
        let mut rest = text;
        while let Some(end) = rest.find('\n') {
            buffer.push_str(&rest[..end]);
            let mut line = std::mem::take(buffer);
            if line.ends_with('\r') {
                line.pop();
            }
            split_long(line, &mut lines);
            rest = &rest[end + 1..];
        }
        buffer.push_str(rest);
        if buffer.len() >= MAX_TEXT {
            // Output that never ends a line (a progress bar) is kept in bounded pieces.
            let pending = std::mem::take(buffer);
            split_long(pending, &mut lines);
            if let Some(last) = lines.pop_if(|l| l.len() < MAX_TEXT) {
                *buffer = last;
            }
        }
        lines
    }

    /// The unfinished lines, emptied (at the process's exit).
    pub fn finish(&mut self) -> Vec<(Stream, String)> {
        let mut out = Vec::new();
        for (stream, buffer) in [
            (Stream::Stdout, &mut self.stdout),
            (Stream::Stderr, &mut self.stderr),
        ] {
            if !buffer.is_empty() {
                out.push((stream, std::mem::take(buffer)));
            }
        }
        out
    }
}

/// Pushes `line` onto `out`, in pieces of at most `MAX_TEXT` bytes (on character boundaries).
fn split_long(line: String, out: &mut Vec<String>) {
    if line.len() <= MAX_TEXT {
        out.push(line);
        return;
    }
    let mut rest = line.as_str();
    while rest.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    out.push(rest.to_string());
}

/// A crash report's text: the traceback (which ends with the exception), its end kept if it
/// is over `MAX_TEXT`.
pub fn crash_text(kind: &str, message: &str, traceback: &str) -> String {
    let text = traceback.trim_end();
    if text.is_empty() {
        return format!("{kind}: {message}");
    }
    if text.len() <= MAX_TEXT {
        return text.to_string();
    }
    let mut start = text.len() - MAX_TEXT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[{start} bytes cut]\n{}", &text[start..])
}

/// Takes what the current process wrote to `stream`: complete lines go to its app's log.
/// Processes outside any app keep nothing here.
pub fn capture(process: &PyProcess, stream: Stream, text: &str) {
    let Some(app) = &process.data.app else {
        return;
    };
    let lines = process.data.output.lock().write(stream, text);
    if !lines.is_empty() {
        app.log.append(process.pid, stream, lines);
    }
}

/// Ends a process's unfinished lines (it exited, or a crash report follows them).
pub fn flush(process: &PyProcess) {
    let Some(app) = &process.data.app else {
        return;
    };
    let pending = process.data.output.lock().finish();
    for (stream, line) in pending {
        app.log.append(process.pid, stream, [line]);
    }
}

/// Records the crash report of a process of an app whose own code raised.
pub fn crashed(process: &PyProcess, reason: &Reason) {
    let (Some(app), Reason::Crash(crash)) = (&process.data.app, reason) else {
        return;
    };
    flush(process);
    let text = crash_text(&crash.kind, &crash.message, &crash.traceback);
    app.log.append(process.pid, Stream::Crash, [text]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::NodeId;

    fn pid(serial: u64) -> Pid {
        Pid {
            node: NodeId::intern("test"),
            incarnation: 1,
            serial,
        }
    }

    fn texts(entries: &[Arc<Entry>]) -> Vec<&str> {
        entries.iter().map(|e| e.text.as_str()).collect()
    }

    #[test]
    fn lines_end_on_newline_and_partial_lines_wait() {
        let mut p = Partial::default();
        assert!(p.write(Stream::Stdout, "hel").is_empty());
        assert_eq!(p.write(Stream::Stdout, "lo\nwor"), vec!["hello"]);
        assert_eq!(p.write(Stream::Stderr, "err\r\n"), vec!["err"]);
        assert_eq!(p.write(Stream::Stdout, "ld\n\n"), vec!["world", ""]);
        assert!(p.write(Stream::Stdout, "tail").is_empty());
        assert_eq!(p.finish(), vec![(Stream::Stdout, "tail".to_string())]);
        assert!(p.finish().is_empty());
    }

    #[test]
    fn endless_lines_are_kept_in_bounded_pieces() {
        let mut p = Partial::default();
        let long = "é".repeat(MAX_TEXT); // two bytes each: cuts must respect characters
        let lines = p.write(Stream::Stdout, &long);
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|l| l.len() <= MAX_TEXT));
        let rest: usize = p.finish().iter().map(|(_, l)| l.len()).sum();
        assert_eq!(
            lines.iter().map(|l| l.len()).sum::<usize>() + rest,
            long.len()
        );
    }

    #[test]
    fn the_newest_entries_are_kept_within_both_bounds() {
        let log = AppLog::default();
        log.append(
            pid(1),
            Stream::Stdout,
            (0..MAX_ENTRIES + 5).map(|i| i.to_string()),
        );
        assert_eq!(log.len(), MAX_ENTRIES);
        let oldest = log.after(0, 1, usize::MAX);
        assert_eq!(texts(&oldest), vec!["5"]);

        let log = AppLog::default();
        let line = "x".repeat(MAX_TEXT);
        let n = MAX_BYTES / cost(&line) + 3;
        log.append(pid(1), Stream::Stderr, (0..n).map(|_| line.clone()));
        assert_eq!(log.len(), MAX_BYTES / cost(&line));
    }

    #[test]
    fn readers_resume_after_a_sequence_number() {
        let log = AppLog::default();
        log.append(pid(1), Stream::Stdout, ["a".to_string(), "b".to_string()]);
        log.append(pid(2), Stream::Crash, ["c".to_string()]);
        let all = log.after(0, 100, usize::MAX);
        assert_eq!(texts(&all), vec!["a", "b", "c"]);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            texts(&log.after(all[0].seq, 100, usize::MAX)),
            vec!["b", "c"]
        );
        assert_eq!(texts(&log.after(all[0].seq, 1, usize::MAX)), vec!["b"]);
        assert_eq!(texts(&log.after(0, 100, 1)), vec!["a"]); // at least one
        assert!(log.after(all[2].seq, 100, usize::MAX).is_empty());
    }

    #[test]
    fn followers_wake_on_append() {
        let log = AppLog::default();
        let mut rx = log.subscribe();
        assert!(!rx.has_changed().unwrap_or(true));
        log.append(pid(1), Stream::Stdout, ["x".to_string()]);
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        log.append(pid(1), Stream::Stdout, Vec::<String>::new());
        assert!(!rx.has_changed().unwrap_or(true), "no entries, no wake-up");
    }

    #[test]
    fn crash_reports_keep_their_end() {
        assert_eq!(crash_text("ValueError", "boom", ""), "ValueError: boom");
        let tb = format!(
            "Traceback\n{}\nValueError: boom\n",
            "  frame\n".repeat(20_000)
        );
        let text = crash_text("ValueError", "boom", &tb);
        assert!(text.len() < MAX_TEXT + 64);
        assert!(text.starts_with('['));
        assert!(text.ends_with("ValueError: boom"));
    }
}
