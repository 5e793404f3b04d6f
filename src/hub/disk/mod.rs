//! The disk broker: the embedded history, also written to a directory so that a restart
//! loses nothing.
//!
//! - **Publish**, with `sync: always`, hands the batch to one writer thread. The thread
//!   takes every batch waiting at that moment (and waits briefly for the publishers its
//!   last flush answered: [`Writer::gather`]), gives them their ids, writes them with one
//!   `write`, flushes once and only then appends them to the in-memory log and answers
//!   each publisher: concurrent publishes share one flush (group commit), and no
//!   subscriber ever sees an event that is not stored. With `sync: <duration>` there is
//!   no flush to wait for, so no hop to the thread: publishes are grouped on the task
//!   that serves them ([`DiskBroker::lead`]): the first to find no group forming lets the
//!   others ready in the same turn of the scheduler add theirs, then writes them all with
//!   one `write` under the writer's lock and answers them; the thread only flushes, at
//!   least that often.
//! - **Start-up** reads the segment files back into the log (the same log the memory
//!   broker uses; dispatchers, replay and the seam are unchanged), so a client resuming
//!   from before the restart gets everything after its id, and new ids follow the last one
//!   on disk even if the clock went back.
//! - **A failed write** (full or read-only disk) answers the waiting publishers with
//!   [`HubError::Unavailable`] and marks the broker down; the partial write is cut off and
//!   the next write starts a new segment. A probe retries every [`PROBE`] until a new
//!   segment can be created, or the next publish succeeds.
//! - **Segments** are started ahead: once the current one is half full, the next is
//!   created (and its directory entry flushed) on a thread of its own, so moving to it
//!   costs the publishes no flush.
//! - **Space**: a segment is deleted whole once every event in it has left the history,
//!   by a thread of its own ([`Remover`]): on a file system mounted with `discard`, an
//!   `unlink` waits for the discard (tens of ms), which the publishes must not wait for.
//!   At most [`REMOVING`] segments wait for it; beyond that the publish removes inline.
//! - **`DELETE /topics/…`** writes a record that hides the topic's earlier events when the
//!   history is read back (after the publishes before it, without waiting for a flush).
//!
//! The writer is an OS thread rather than a task because `fsync` blocks (a `write` to the
//! page cache is as short as the memory broker's append, hence done by the publishes with
//! `sync: <duration>`); nothing here runs per subscriber.

mod segment;

use super::Local;
use super::log::{encode, next_id, now_ms};
use super::{Event, HubError, NewEvent};
use crate::sse::EventId;
use segment::Record;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How often a broker that is down tries to write again without waiting for a publish.
const PROBE: Duration = Duration::from_secs(1);

/// Largest segment file before a new one is started.
const SEGMENT_BYTES: u64 = 64 << 20;

/// A segment that reached its event count ([`Writer::segment_events`]) within
/// [`MIN_SEGMENT_AGE`] of being started is kept open until it holds this much: sized by
/// count alone, a small history taking events fast would create and remove hundreds of
/// files a second (400 at a million events a second into a history of 10,000), each
/// creation two flushes and a thread's work. The directory then holds at most this much
/// more than the history. The unit tests keep count-sized segments, so that a few events
/// span several.
const MIN_SEGMENT_BYTES: u64 = if cfg!(test) { 0 } else { 4 << 20 };

/// See [`MIN_SEGMENT_BYTES`]: a segment filled more slowly ends at its event count, so
/// that events out of the history (by count or by `max_age`) leave the disk as soon as
/// they did when segments were sized by count alone.
const MIN_SEGMENT_AGE: Duration = Duration::from_secs(1);

/// At most this many events are written in one group (bounds one write's buffer).
const GROUP_EVENTS: usize = 65_536;

/// The write buffer is kept for the next group up to this capacity.
const KEEP_BUFFER: usize = 1 << 20;

/// At most this many segments, out of the history already, wait for the remover thread;
/// further ones are removed inline, so the directory holds at most this many more.
const REMOVING: usize = 2;

/// Why the disk broker cannot start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The directory cannot be created or listed.
    #[error("cannot use {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Work for the writer.
enum Job {
    /// A publish waiting to be stored and answered.
    Publish {
        batch: Vec<NewEvent>,
        done: oneshot::Sender<Result<Vec<EventId>, HubError>>,
        /// When it was handed to the writer.
        sent: Instant,
    },
    /// A deleted topic, so that its history does not come back at the next start.
    Delete(Box<str>),
}

impl Job {
    fn records(&self) -> usize {
        match self {
            Job::Publish { batch, .. } => batch.len(),
            Job::Delete(_) => 1,
        }
    }
}

/// The publishes waiting for the leader of their group to write them (`sync: <duration>`).
#[derive(Default)]
struct Pending {
    jobs: Vec<Job>,
    /// Whether a leader is on its way to write `jobs`.
    led: bool,
}

/// The handle the hub keeps: with `sync: always`, publishes go to the writer thread.
pub(crate) struct DiskBroker {
    tx: mpsc::Sender<Job>,
    /// With `sync: <duration>`, publishes write themselves (under this lock, like the
    /// memory broker's append): there is no flush to share, so no hop to a thread.
    inline: Option<Arc<Mutex<Writer>>>,
    /// With `sync: <duration>`, the group being formed ([`DiskBroker::lead`]).
    pending: Mutex<Pending>,
    up: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The writer, for tests to wait on (also with `sync: always`).
    #[cfg(test)]
    shared: Arc<Mutex<Writer>>,
}

impl Drop for DiskBroker {
    /// Waits for the writer to finish (its last flush, a segment it is creating ahead), so
    /// that a broker started next on the same directory finds it as this one left it.
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.tx, mpsc::channel().0));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl DiskBroker {
    /// Reads the history in `dir` back into the log, then starts the writer thread.
    /// `sync` is `None` for `always`. An unreadable directory is an error; an unwritable
    /// one is not (the broker starts down and keeps trying).
    pub(super) fn start(
        dir: &Path,
        sync: Option<Duration>,
        max_events: usize,
        max_age: Duration,
        local: Local,
    ) -> Result<Self, Error> {
        let dir_error = |source| Error::Dir {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_error)?;
        let started = Instant::now();
        let numbers = segment::list(dir).map_err(dir_error)?;
        // Numbers are never reused, even those of files removed while reading.
        let next_number = numbers.last().map_or(1, |n| n + 1);
        let history = read_history(dir, numbers);
        let last = history.last;
        let segments = history.segments;
        let up = Arc::new(AtomicBool::new(true));
        let mut writer = Writer {
            dir: dir.to_owned(),
            sync,
            max_events: max_events.max(1) as u64,
            max_age,
            segment_events: (max_events as u64 / 4).clamp(64, 1 << 20),
            total: segments.iter().map(|s| s.events).sum(),
            segments,
            current: None,
            ahead: None,
            answered: 0,
            answered_at: Instant::now(),
            flush_took: Duration::ZERO,
            next_number,
            last_id: local.log.last_id().max(last),
            dirty: false,
            unflushed: Vec::new(),
            removed: Vec::new(),
            remover: Remover::start(dir),
            buf: Vec::new(),
            last_sync: Instant::now(),
            up: Arc::clone(&up),
            local,
        };
        writer.remove_old(now_ms());
        // Only the segments kept are history: one whose removal was pending at a crash
        // (possibly behind a newer one already removed) has left it, and a resume from
        // before the oldest kept may have missed events.
        let mut events = history.events;
        let loaded = match (history.first, writer.segments.front()) {
            (None, _) => 0,
            (Some(_), Some(oldest)) => {
                let from = oldest.first;
                events.retain(|e| e.id >= from);
                let n = events.len();
                writer.local.log.load(events, from, last);
                n
            }
            (Some(_), None) => {
                writer.local.log.load(Vec::new(), last.next(), last);
                0
            }
        };
        writer.try_open();
        tracing::info!(
            dir = %dir.display(),
            events = loaded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "history loaded from disk"
        );
        let (tx, rx) = mpsc::channel();
        let writer = Arc::new(Mutex::new(writer));
        #[cfg(test)]
        let shared = Arc::clone(&writer);
        let inline = sync.is_some().then(|| Arc::clone(&writer));
        let thread = std::thread::Builder::new()
            .name("ssegate-disk".into())
            .spawn(move || run(&writer, &rx))
            .map_err(dir_error)?;
        Ok(Self {
            tx,
            inline,
            pending: Mutex::default(),
            up,
            writer: Some(thread),
            #[cfg(test)]
            shared,
        })
    }

    /// Stores a batch; answers once it is written (and flushed, with `sync: always`).
    pub(super) async fn publish(&self, batch: Vec<NewEvent>) -> Result<Vec<EventId>, HubError> {
        let (done, answer) = oneshot::channel();
        let gone = || HubError::Unavailable("the disk writer stopped".into());
        let job = Job::Publish {
            batch,
            done,
            sent: Instant::now(),
        };
        match &self.inline {
            Some(writer) => self.lead(writer, job).await,
            None => self.tx.send(job).map_err(|_| gone())?,
        }
        answer.await.map_err(|_| gone())?
    }

    /// Records that `topic` was deleted (in the background: the log already dropped it).
    pub(super) fn delete_topic(&self, topic: &str) {
        let job = Job::Delete(topic.into());
        match &self.inline {
            // Written now, like the log's deletion: before any publish this caller makes
            // next, and before those still pending, which the log has not seen either.
            Some(writer) => lock(writer).commit(vec![job]),
            None => {
                let _ = self.tx.send(job);
            }
        }
    }

    /// With `sync: <duration>`, adds a publish to the group being formed; the first to
    /// find none forming leads it: it lets the other publishes ready in this turn of the
    /// scheduler add theirs, then writes them all in one go and answers them. Concurrent
    /// publishes share one `write` with no hop to another thread (a wake-up each way
    /// there and back cost more than the `write` itself). The group is written even if
    /// the leader's future is dropped meanwhile ([`Leader`]).
    async fn lead(&self, writer: &Mutex<Writer>, job: Job) {
        let first = {
            let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            p.jobs.push(job);
            !std::mem::replace(&mut p.led, true)
        };
        if first {
            let leader = Leader {
                pending: &self.pending,
                writer,
            };
            tokio::task::yield_now().await;
            drop(leader);
        }
    }

    /// Waits until the remover thread has dealt with every segment handed to it by the
    /// last commit (which, with `sync: always`, may still run after its publish was
    /// answered: waiting for the writer's lock waits it out); returns those whose
    /// deletion failed.
    #[cfg(test)]
    fn settle_removals(&self) -> Vec<u64> {
        let state = Arc::clone(&lock(&self.shared).remover.state);
        let (removals, done) = &*state;
        let mut r = removals.lock().unwrap_or_else(PoisonError::into_inner);
        while r.pending > 0 {
            r = done.wait(r).unwrap_or_else(PoisonError::into_inner);
        }
        r.failed.clone()
    }

    /// Whether the last write (or probe) succeeded.
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// The leader of a group of publishes (`sync: <duration>`): writes the group when dropped,
/// whether its publish went on or was dropped (client gone), so that no publish of the
/// group is lost or left waiting.
struct Leader<'a> {
    pending: &'a Mutex<Pending>,
    writer: &'a Mutex<Writer>,
}

impl Drop for Leader<'_> {
    /// Writes everything pending, [`GROUP_EVENTS`] at most per `write`, including what
    /// publishes on other threads add meanwhile; then the next publish leads.
    fn drop(&mut self) {
        loop {
            let group = {
                let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let mut n = 0;
                let take = p
                    .jobs
                    .iter()
                    .take_while(|j| {
                        let fits = n < GROUP_EVENTS;
                        n += j.records();
                        fits
                    })
                    .count();
                if take == 0 {
                    p.led = false;
                    return;
                }
                if take == p.jobs.len() {
                    std::mem::take(&mut p.jobs)
                } else {
                    p.jobs.drain(..take).collect()
                }
            };
            lock(self.writer).commit(group);
        }
    }
}

/// What the segment files hold, read in order.
struct History {
    segments: VecDeque<Segment>,
    /// The events, without those of topics deleted after them.
    events: Vec<Arc<Event>>,
    /// The first and last ids on disk, deleted topics included.
    first: Option<EventId>,
    last: EventId,
}

/// Reads segments `numbers` of `dir`; a record cut short ends its segment with a warning,
/// and files with no record are removed.
fn read_history(dir: &Path, numbers: Vec<u64>) -> History {
    let mut h = History {
        segments: VecDeque::new(),
        events: Vec::new(),
        first: None,
        last: EventId::default(),
    };
    for number in numbers {
        let path = segment::path(dir, number);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a history segment; skipped");
                continue;
            }
        };
        let scan = segment::scan(&bytes);
        if let Some((offset, why)) = scan.torn {
            tracing::warn!(path = %path.display(), offset, why, "history segment cut short (by a crash during a write that was not acknowledged, or damaged); the rest of it is dropped");
        }
        if scan.records.is_empty() {
            // Opened ahead by a run that then wrote nothing (or nothing readable).
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an empty history segment");
            }
            continue;
        }
        let mut seg = Segment {
            number,
            events: 0,
            first: EventId::default(),
            last_ms: 0,
        };
        for record in scan.records {
            match record {
                Record::Event(e) => {
                    if seg.events == 0 {
                        seg.first = e.id;
                    }
                    seg.events += 1;
                    seg.last_ms = e.id.ms;
                    h.first = h.first.or(Some(e.id));
                    h.last = h.last.max(e.id);
                    h.events.push(e);
                }
                Record::Delete(topic) => h.events.retain(|e| !e.is_only_in(&topic)),
            }
        }
        h.segments.push_back(seg);
    }
    h
}

/// A segment file the writer knows about.
struct Segment {
    number: u64,
    events: u64,
    /// The oldest event's id as read back at start-up (default for segments this run
    /// wrote: it only decides where the loaded history starts).
    first: EventId,
    /// The newest event's millisecond (0 when empty).
    last_ms: u64,
}

/// The open segment being appended to.
struct Current {
    number: u64,
    file: Arc<File>,
    len: u64,
    opened: Instant,
}

/// The next segment, being created (or created) on its own thread.
struct Ahead {
    number: u64,
    job: std::thread::JoinHandle<std::io::Result<File>>,
}

struct Writer {
    dir: PathBuf,
    sync: Option<Duration>,
    max_events: u64,
    max_age: Duration,
    /// Events per segment before a new one is started (see [`MIN_SEGMENT_BYTES`]).
    segment_events: u64,
    /// Events in all segments.
    total: u64,
    /// Every segment on disk, oldest first; the last one is `current` when that is open.
    segments: VecDeque<Segment>,
    current: Option<Current>,
    /// The segment to move to when `current` is full.
    ahead: Option<Ahead>,
    /// How many publishes the last group answered, when, and how long its flush took.
    answered: usize,
    answered_at: Instant,
    flush_took: Duration,
    next_number: u64,
    last_id: EventId,
    /// Written since the last flush (`sync: <duration>` only).
    dirty: bool,
    /// Segments left with writes not flushed yet, by number (`sync: <duration>` only).
    unflushed: Vec<(u64, Arc<File>)>,
    /// Segments removed before they were flushed: their events left the history, so the
    /// thread closes them without a flush (writing them back would be I/O for nothing).
    removed: Vec<Arc<File>>,
    /// Deletes the segments out of the history off the publish path.
    remover: Remover,
    /// The records of the group being written, kept from one group to the next.
    buf: Vec<u8>,
    last_sync: Instant,
    up: Arc<AtomicBool>,
    local: Local,
}

impl Writer {
    /// How long the thread may sleep: until the next flush is due (`sync: <duration>`:
    /// publishes write without waking it), or the next probe while down.
    fn wait(&self) -> Duration {
        let probe = if self.up.load(Ordering::Relaxed) {
            Duration::from_secs(3600)
        } else {
            PROBE
        };
        match self.sync {
            Some(every) if self.dirty => probe.min(every.saturating_sub(self.last_sync.elapsed())),
            Some(every) => probe.min(every),
            None => probe,
        }
    }

    /// With `sync: always`, waits a little for the publishers the last flush answered:
    /// they usually publish again at once, and without the wait those that come back
    /// while this group is being flushed wait for the next flush, so the publishers split
    /// into two halves taking turns, each flush serving only one. The wait ends as soon as
    /// as many have come back as were answered, and lasts at most one flush's time (1 ms
    /// at most): a lone publisher never waits, since its return ends the wait.
    fn gather(&self, rx: &mpsc::Receiver<Job>, group: &mut Vec<Job>, mut n: usize) {
        if self.sync.is_some() {
            return;
        }
        let back =
            |job: &Job| matches!(job, Job::Publish { sent, .. } if *sent >= self.answered_at);
        let mut returned = group.iter().filter(|j| back(j)).count();
        let until = Instant::now() + self.flush_took.min(Duration::from_millis(1));
        while returned < self.answered && n < GROUP_EVENTS {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(job) = rx.recv_timeout(left) else {
                break;
            };
            returned += usize::from(back(&job));
            n += job.records();
            group.push(job);
        }
    }

    /// Writes a group of publishes, then appends them to the log and answers them.
    fn commit(&mut self, group: Vec<Job>) {
        let now = now_ms();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut events = Vec::with_capacity(group.iter().map(Job::records).sum());
        let mut answers = Vec::with_capacity(group.len());
        for job in group {
            let (batch, done) = match job {
                Job::Publish { batch, done, .. } => (batch, done),
                Job::Delete(topic) => {
                    segment::encode_delete(&topic, &mut buf);
                    continue;
                }
            };
            let mut ids = Vec::with_capacity(batch.len());
            for ev in batch {
                let event = encode(next_id(self.last_id, now), ev);
                self.last_id = event.id;
                segment::encode(&event, &mut buf);
                ids.push(event.id);
                events.push(event);
            }
            answers.push((done, ids));
        }
        let written = self.write(&buf, events.len() as u64, now);
        if buf.capacity() <= KEEP_BUFFER {
            self.buf = buf;
        }
        match written {
            Ok(()) => {
                self.local.append_remote(events);
                self.answered = answers.len();
                self.answered_at = Instant::now();
                for (done, ids) in answers {
                    let _ = done.send(Ok(ids));
                }
                self.remove_old(now);
                self.create_ahead();
            }
            Err(e) => {
                for (done, _) in answers {
                    let _ = done.send(Err(HubError::Unavailable(format!(
                        "cannot write to disk: {e}"
                    ))));
                }
            }
        }
    }

    /// Whether the open segment holds `1 / share` of a full one: [`Self::segment_events`]
    /// events, and [`MIN_SEGMENT_BYTES`] bytes or [`MIN_SEGMENT_AGE`] of age; or
    /// [`SEGMENT_BYTES`] bytes.
    fn filled(&self, share: u32) -> bool {
        let Some(cur) = &self.current else {
            return false;
        };
        let events = self.segments.back().map_or(0, |s| s.events);
        (events >= self.segment_events / u64::from(share)
            && (cur.len >= MIN_SEGMENT_BYTES / u64::from(share)
                || cur.opened.elapsed() >= MIN_SEGMENT_AGE / share))
            || cur.len >= SEGMENT_BYTES / u64::from(share)
    }

    /// Appends `buf` (holding `n` records) to the current segment, starting one if needed.
    fn write(&mut self, buf: &[u8], n: u64, now: u64) -> std::io::Result<()> {
        if self.filled(1) {
            self.retire(false);
        }
        let result = self.open().and_then(|()| self.append(buf));
        match &result {
            Ok(()) => {
                if let Some(seg) = self.segments.back_mut() {
                    seg.events += n;
                    seg.last_ms = seg.last_ms.max(now);
                }
                self.total += n;
                self.set_up(true, None);
            }
            Err(e) => {
                // Cut the partial write off so the file stays readable to its end; either
                // way the next write starts a new segment (after a failed flush, what the
                // file holds is unknown).
                self.retire(true);
                self.set_up(false, Some(e));
            }
        }
        result
    }

    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let Some(cur) = self.current.as_mut() else {
            return Err(std::io::Error::other("no open segment"));
        };
        (&*cur.file).write_all(buf)?;
        let started = Instant::now();
        if self.sync.is_none() {
            cur.file.sync_data()?;
        }
        cur.len += buf.len() as u64;
        match self.sync {
            None => self.flush_took = started.elapsed(),
            // Flushed by the writer thread ([`flush_due`]).
            Some(_) => {
                if !self.dirty {
                    self.dirty = true;
                    self.last_sync = Instant::now();
                }
            }
        }
        Ok(())
    }

    /// Stops appending to the current segment, `cut` back to the end of its last whole
    /// write. With `sync: <duration>`, what it holds unflushed is still flushed by the
    /// next flush.
    fn retire(&mut self, cut: bool) {
        let Some(cur) = self.current.take() else {
            return;
        };
        if cut {
            let _ = cur.file.set_len(cur.len);
        }
        if self.dirty {
            self.unflushed.push((cur.number, cur.file));
        }
    }

    /// Makes a segment current if none is: the one created ahead ([`Self::create_ahead`])
    /// if there is one (waiting for it if it is still being created), else a new one.
    fn open(&mut self) -> std::io::Result<()> {
        if self.current.is_some() {
            return Ok(());
        }
        let ahead = self.ahead.take().and_then(|a| match a.job.join() {
            Ok(Ok(file)) => Some((a.number, file)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the segment created ahead failed; creating one now");
                None
            }
            Err(_) => None,
        });
        let (number, file) = match ahead {
            Some(ready) => ready,
            None => {
                let number = self.take_number();
                (number, create(&self.dir, number)?)
            }
        };
        self.segments.push_back(Segment {
            number,
            events: 0,
            first: EventId::default(),
            last_ms: 0,
        });
        self.current = Some(Current {
            number,
            file: Arc::new(file),
            len: segment::MAGIC.len() as u64,
            opened: Instant::now(),
        });
        Ok(())
    }

    /// The next segment number. It is used up even if creating that segment fails: never
    /// append after a failed file.
    fn take_number(&mut self) -> u64 {
        self.next_number += 1;
        self.next_number - 1
    }

    /// Once the current segment is half full, starts creating the next one on its own
    /// thread, so that moving to it costs the publishes nothing: creating a segment
    /// flushes the file and the directory, two flushes a publish would otherwise wait for.
    fn create_ahead(&mut self) {
        if self.ahead.is_some() || !self.filled(2) {
            return;
        }
        let number = self.take_number();
        let dir = self.dir.clone();
        match std::thread::Builder::new()
            .name("ssegate-disk-ahead".into())
            .spawn(move || create(&dir, number))
        {
            Ok(job) => self.ahead = Some(Ahead { number, job }),
            // The segment is created when it is needed instead.
            Err(e) => {
                tracing::debug!(error = %e, "cannot start a thread to create a segment ahead");
            }
        }
    }

    /// Removes the segment created ahead, if any (waiting for it to be created): a probe
    /// must create a segment itself to learn whether the directory takes writes again.
    fn discard_ahead(&mut self) {
        if let Some(a) = self.ahead.take()
            && let Ok(Ok(file)) = a.job.join()
        {
            drop(file);
            let _ = std::fs::remove_file(segment::path(&self.dir, a.number));
        }
    }

    /// Opens a segment ahead of the next publish: the start-up check and the probe while
    /// down.
    fn try_open(&mut self) {
        self.discard_ahead();
        match self.open() {
            Ok(()) => self.set_up(true, None),
            Err(e) => self.set_up(false, Some(&e)),
        }
    }

    fn set_up(&self, up: bool, error: Option<&std::io::Error>) {
        let was = self.up.swap(up, Ordering::Relaxed);
        let dir = self.dir.display();
        match (was, up, error) {
            (true, false, Some(e)) => {
                tracing::error!(%dir, error = %e, "cannot write the history to disk; publishes fail until it can");
            }
            (false, false, Some(e)) => {
                tracing::debug!(%dir, error = %e, "the history directory is still not writable");
            }
            (false, true, _) => tracing::info!(%dir, "the history directory is writable again"),
            _ => {}
        }
    }

    /// Deletes the oldest segments whose events have all left the history (by count:
    /// the later segments hold `max_events` already; by age: the newest is older than
    /// `max_age`), and empty ones; never the one being written. They leave `segments` at
    /// once and are deleted by the [`Remover`]; those it failed to delete are tried again.
    fn remove_old(&mut self, now: u64) {
        self.remover.retry();
        let max_age = u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(max_age);
        let open = usize::from(self.current.is_some());
        while self.segments.len() > open {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            let gone = oldest.events == 0
                || self.total - oldest.events >= self.max_events
                || oldest.last_ms < cutoff;
            if !gone {
                break;
            }
            self.remover.remove(oldest.number);
            if let Some(i) = self.unflushed.iter().position(|(n, _)| *n == oldest.number) {
                let (_, file) = self.unflushed.swap_remove(i);
                self.removed.push(file);
            }
            self.total -= oldest.events;
            self.segments.pop_front();
        }
    }
}

/// Deletes segment files on a thread of its own, at most [`REMOVING`] waiting at a time;
/// beyond that (or without the thread) the caller deletes inline. A failed deletion
/// (other than the file being gone already) is kept and handed to the thread again by
/// the next [`Remover::retry`] (never retried inline, so a disk that refuses deletions
/// costs the publishes no more than one attempt per segment); its warning is
/// rate-limited ([`crate::logbound`]).
struct Remover {
    dir: PathBuf,
    state: Arc<(Mutex<Removals>, Condvar)>,
    tx: Option<mpsc::SyncSender<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the remover thread shares with the writer.
#[derive(Default)]
struct Removals {
    /// Handed to the thread and not deleted (or failed) yet.
    pending: usize,
    /// Segments whose deletion failed, to try again.
    failed: Vec<u64>,
}

impl Remover {
    fn start(dir: &Path) -> Self {
        let state = Arc::new((Mutex::new(Removals::default()), Condvar::new()));
        let (tx, rx) = mpsc::sync_channel::<u64>(REMOVING);
        let (thread_dir, thread_state) = (dir.to_owned(), Arc::clone(&state));
        let thread = std::thread::Builder::new()
            .name("ssegate-disk-rm".into())
            .spawn(move || {
                for number in rx {
                    let ok = delete(&thread_dir, number);
                    let (removals, done) = &*thread_state;
                    let mut r = removals.lock().unwrap_or_else(PoisonError::into_inner);
                    if !ok {
                        r.failed.push(number);
                    }
                    r.pending -= 1;
                    done.notify_all();
                }
            });
        let (tx, thread) = match thread {
            Ok(thread) => (Some(tx), Some(thread)),
            Err(e) => {
                tracing::debug!(error = %e, "cannot start a thread to remove segments; removing inline");
                (None, None)
            }
        };
        Self {
            dir: dir.to_owned(),
            state,
            tx,
            thread,
        }
    }

    fn removals(&self) -> MutexGuard<'_, Removals> {
        self.state.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes segment `number`: hands it to the thread if fewer than [`REMOVING`] wait
    /// for it, else deletes it here.
    fn remove(&mut self, number: u64) {
        if let Some(tx) = &self.tx {
            let mut r = self.removals();
            // Only this (the writer) adds to `pending`, so the channel always has room.
            if r.pending < REMOVING && tx.try_send(number).is_ok() {
                r.pending += 1;
                return;
            }
        }
        if !delete(&self.dir, number) {
            self.removals().failed.push(number);
        }
    }

    /// Tries again the deletions that failed, as many as the thread has room for (all of
    /// them inline if there is no thread); the rest wait for the next call.
    fn retry(&mut self) {
        let Some(tx) = &self.tx else {
            let failed = std::mem::take(&mut self.removals().failed);
            for number in failed {
                self.remove(number);
            }
            return;
        };
        let mut r = self.removals();
        while r.pending < REMOVING
            && let Some(&number) = r.failed.last()
            && tx.try_send(number).is_ok()
        {
            r.failed.pop();
            r.pending += 1;
        }
    }
}

impl Drop for Remover {
    /// Lets the thread finish the deletions handed to it.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Deletes segment `number` of `dir`; false if it is still there (warned, rate-limited).
fn delete(dir: &Path, number: u64) -> bool {
    let path = segment::path(dir, number);
    match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            if let Some(suppressed) = crate::logbound::admit("history_segment_removal", None) {
                tracing::warn!(path = %path.display(), error = %e, suppressed, "cannot remove an old history segment; trying again later");
            }
            false
        }
    }
}

fn lock(writer: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    // A panic while holding the writer would be a bug in this file; serve on rather than
    // poison every publish after it.
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer thread. With `sync: always` it takes the publishes queued for it and
/// commits them in groups; with `sync: <duration>` (publishes write themselves, nothing is
/// queued for it) it flushes what they wrote at least that often. Either way it probes
/// while down.
fn run(writer: &Mutex<Writer>, rx: &mpsc::Receiver<Job>) {
    loop {
        let wait = lock(writer).wait();
        match rx.recv_timeout(wait) {
            Ok(first) => {
                let mut w = lock(writer);
                let mut group = vec![first];
                let mut n = group[0].records();
                while n < GROUP_EVENTS {
                    let Ok(more) = rx.try_recv() else { break };
                    n += more.records();
                    group.push(more);
                }
                w.gather(rx, &mut group, n);
                w.commit(group);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                {
                    let mut w = lock(writer);
                    if w.current.is_none() {
                        w.try_open();
                    }
                }
                flush_due(writer, false);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                flush_due(writer, true);
                // Left empty, it is removed at the next start.
                if let Some(a) = lock(writer).ahead.take() {
                    let _ = a.job.join();
                }
                return;
            }
        }
    }
}

/// With `sync: <duration>`, flushes what was written once the duration has passed since
/// the first unflushed write (or at once, with `now`), without holding the writer:
/// publishes go on writing meanwhile. Segments removed meanwhile are closed unflushed. A
/// failed flush is reported as the broker going down, and the next write starts a new
/// segment (what the file holds is unknown).
fn flush_due(writer: &Mutex<Writer>, now: bool) {
    let (files, current, _removed) = {
        let mut w = lock(writer);
        let Some(every) = w.sync else { return };
        if !w.dirty || (!now && w.last_sync.elapsed() < every) {
            return;
        }
        w.dirty = false;
        w.last_sync = Instant::now();
        let current = w.current.as_ref().map(|c| Arc::clone(&c.file));
        let mut files: Vec<_> = w.unflushed.drain(..).map(|(_, f)| f).collect();
        files.extend(current.clone());
        (files, current, std::mem::take(&mut w.removed))
    };
    if let Err(e) = files.iter().try_for_each(|f| f.sync_data()) {
        let mut w = lock(writer);
        let same = |c: &Current| current.as_ref().is_some_and(|f| Arc::ptr_eq(f, &c.file));
        if w.current.as_ref().is_some_and(same) {
            w.current = None;
        }
        w.set_up(false, Some(&e));
    }
}

/// Creates segment `number` in `dir`: the magic written and flushed, and the directory
/// entry flushed too, so that a segment holding answered events survives a crash. A file
/// that could not be made ready is removed.
fn create(dir: &Path, number: u64) -> std::io::Result<File> {
    let path = segment::path(dir, number);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    let ready = (&file)
        .write_all(segment::MAGIC)
        .and_then(|()| file.sync_data())
        .and_then(|()| File::open(dir)?.sync_all());
    if let Err(e) = ready {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

#[cfg(test)]
mod tests;
