//! The fan-out scenario: N streams over T topics, then events published at a rate R for D
//! seconds, or a burst of K as fast as the server accepts them; every delivery checked
//! (sequence per topic: lost, duplicated) and timed (send stamp in the data).
//!
//! With `--streams 0` it measures the publish webhook alone. With `--h2` the streams are
//! HTTP/2 streams multiplexed over a few h2c connections (ssegate only).

use crate::h2;
use crate::http::{self, BodyDecoder, Conn, Framing};
use crate::sse;
use crate::stats::{Histogram, Sample, Server, ms, now_us};
use crate::target::{self, Kind, Outgoing};
use clap::Args;
use http_body_util::BodyExt as _;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{
    AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

/// Options of `loadgen run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The server under test (decides the publish format).
    #[arg(long, value_enum, default_value = "ssegate")]
    pub target: Kind,
    /// Where streams connect (the public listener). Repeat or comma-separate to spread the
    /// streams over several servers: stream i connects to address (i div T) mod N, so each
    /// topic's streams are spread over all of them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:18080")]
    pub sub_addr: Vec<SocketAddr>,
    /// Where events are published (ssegate's admin listener; Nchan 29081; Pushpin 29561; the floor 29181).
    #[arg(long, default_value = "127.0.0.1:18081")]
    pub pub_addr: SocketAddr,
    /// Subscribe path template; `{topic}` is replaced. Default `/events/{topic}` (the
    /// floor: `/{topic}`).
    #[arg(long)]
    pub sub_path: Option<String>,
    /// Publish path override (default per target: /publish, /pub/{topic}, /publish/, /).
    #[arg(long)]
    pub pub_path: Option<String>,
    /// Streams to open.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Topics; stream i follows topic i mod T, event k goes to topic k mod T.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Topic names are this prefix followed by the topic's number.
    #[arg(long, default_value = "lg-")]
    pub topic_prefix: String,
    /// Events per second over all topics (0: as fast as the server accepts them).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds of publishing (rate × duration events).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Publish exactly K events as fast as accepted instead of a rate.
    #[arg(long)]
    pub burst: Option<u64>,
    /// Events per publish request (ssegate: a JSON array when > 1; Nchan: always 1).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Concurrent publisher connections.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Stream connections being opened at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N, round robin (loopback targets only).
    #[arg(long, default_value_t = 8)]
    pub src_ips: u8,
    /// Server process ids to sample (RSS, CPU); repeat or comma-separate to sum several.
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Seconds to wait after the last stream connected, before sampling RSS and publishing.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Stop waiting for deliveries after this many seconds without one.
    #[arg(long, default_value_t = 3.0)]
    pub drain_idle: f64,
    /// Stop waiting for deliveries this many seconds after the last publish, whatever.
    #[arg(long, default_value_t = 60.0)]
    pub drain_max: f64,
    /// Give up connecting streams after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,
    /// Read buffer per stream, bytes.
    #[arg(long, default_value_t = 8192)]
    pub read_buf: usize,
    /// Do not reconnect (with Last-Event-ID) a stream the server ends.
    #[arg(long)]
    pub no_reconnect: bool,
    /// Also drop and reopen each stream (with `Last-Event-ID`) after a random interval of
    /// 0.5–1.5 × SECS, again and again (a forced reconnect; off by default).
    #[arg(long, value_name = "SECS")]
    pub reconnect_every: Option<f64>,
    /// Share of the streams (chosen pseudo-randomly) that read slowly: they stop reading
    /// for `--slow-pause-ms` every `--slow-read-ms` (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub slow_fraction: f64,
    /// How long a slow stream stops reading at a time, ms.
    #[arg(long, default_value_t = 5000)]
    pub slow_pause_ms: u64,
    /// How long a slow stream reads between two pauses, ms.
    #[arg(long, default_value_t = 5000)]
    pub slow_read_ms: u64,
    /// Receive buffer (`SO_RCVBUF`, bytes) of the slow streams' sockets (0: the OS default),
    /// so that a pause backs up into the server sooner (HTTP/1.1 only: HTTP/2 streams share
    /// their connection's socket, and a paused one is held back by its flow-control window).
    #[arg(long, default_value_t = 0)]
    pub slow_rcvbuf: u32,
    /// Seed of the choices above (which streams are slow, reconnect intervals).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Open the streams as HTTP/2 streams (prior-knowledge h2c) multiplexed over
    /// `--h2-conns` connections per `--sub-addr` (ssegate only; publishing stays HTTP/1.1).
    #[arg(long)]
    pub h2: bool,
    /// HTTP/2 connections per `--sub-addr` (0: one per 1,000 streams, the most concurrent
    /// streams ssegate allows on one connection; more streams than that wait for a slot).
    #[arg(long, default_value_t = 0)]
    pub h2_conns: usize,
    /// A name for this run in the report.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// The most concurrent streams ssegate allows on one HTTP/2 connection.
const H2_STREAMS_PER_CONN: usize = ssegate::server::MAX_CONCURRENT_STREAMS as usize;

/// Everything the tasks update while the run goes on.
struct Shared {
    latency: Histogram,
    publish_rtt: Histogram,
    /// Per topic, per sequence number: the largest publish→receive latency seen, i.e. the
    /// time to the event's last delivery.
    last_delivery: Vec<Vec<AtomicU64>>,
    deliveries: AtomicU64,
    received: AtomicU64,
    last_delivery_us: AtomicU64,
    connected: AtomicUsize,
    connect_failed: AtomicUsize,
    connected_per_topic: Vec<AtomicU64>,
    connect_done_us: AtomicU64,
    accepted: Vec<AtomicU64>,
    /// Per topic, the sequence numbers the server accepted (a 2xx answer to their publish).
    accepted_seqs: Vec<Mutex<Seen>>,
    /// With several publishers, per topic and sequence number: when its publish was answered
    /// (µs, as `now_us`; 0: not, or not yet). Every stream reads it on each delivery that
    /// comes out of the numbers' order, so without a lock: a mutex here moved between the
    /// readers' threads on each such delivery (15–23% of the load generator's samples in S3).
    answered: Vec<Box<[AtomicU64]>>,
    /// One publisher, which sends a request only once the one before is answered: the
    /// sequence numbers are then the server's order.
    in_order: bool,
    publish_requests: AtomicU64,
    publish_failed: AtomicU64,
    /// Events of refused publishes, by HTTP status (or `io` when the request failed).
    publish_refused: Mutex<BTreeMap<String, u64>>,
    last_publish_us: AtomicU64,
    /// The first error seen (later ones are counted where they happen, not kept).
    first_error: OnceLock<String>,
}

impl Shared {
    /// Keeps the first error's message; `msg` is only called for that one, so that a
    /// condition met on every delivery costs no formatting.
    fn error(&self, msg: impl FnOnce() -> String) {
        if self.first_error.get().is_none() {
            let _ = self.first_error.set(msg());
        }
    }

    fn refused(&self, why: String, events: u64) {
        self.publish_failed.fetch_add(events, Relaxed);
        if let Ok(mut r) = self.publish_refused.lock() {
            *r.entry(why).or_default() += events;
        }
    }

    /// Whether an event of `topic` with a sequence number in `range` is known to come
    /// before, in the server's order, the event whose publish was sent at `sent`: a stream
    /// that receives the later one first has skipped it or received it out of order. With
    /// one publisher, every accepted lower number does; with several in flight, the numbers
    /// are not the server's order (two publishes sent together may be taken either way
    /// round), and only one answered before the later one was sent is known to.
    fn preceded(&self, topic: usize, range: std::ops::Range<u64>, sent: u64) -> bool {
        if self.in_order {
            let Some(Ok(acc)) = self.accepted_seqs.get(topic).map(Mutex::lock) else {
                return true;
            };
            return range.into_iter().any(|s| acc.contains(s));
        }
        let answered = self.answered.get(topic).map_or(&[][..], |a| &a[..]);
        range.into_iter().any(|s| {
            usize::try_from(s)
                .ok()
                .and_then(|i| answered.get(i))
                .map(|at| at.load(Acquire))
                .is_some_and(|at| at != 0 && at <= sent)
        })
    }
}

/// What one stream saw.
#[derive(Default)]
struct StreamResult {
    topic: usize,
    /// Index into `--sub-addr`.
    sub: usize,
    connected: bool,
    slow: bool,
    /// The largest sequence number received so far.
    max_seq: Option<u64>,
    /// When that event's publish was sent.
    max_sent: u64,
    /// New sequence numbers that arrived after a larger one (not in order).
    out_of_order: u64,
    /// Times a sequence number skipped ahead of the next expected one.
    gaps: u64,
    /// Reconnects the load generator forced (`--reconnect-every`).
    forced: u64,
    /// Pauses a slow stream took.
    pauses: u64,
    distinct: u64,
    dups: u64,
    bad_payload: u64,
    out_of_range: u64,
    reconnects: u64,
    ends: u64,
    errors: u64,
    sse: sse::Counters,
    control: BTreeMap<String, u64>,
    /// The sequence numbers received.
    seen: Seen,
}

/// A set of sequence numbers (received by a stream, or accepted by the server).
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
}

/// Sequence numbers above this are taken as garbage rather than grown into.
const MAX_SEQ: u64 = 1 << 28;

impl Seen {
    /// Records `seq`; `Some(true)` if new, `Some(false)` if a duplicate.
    fn insert(&mut self, seq: u64) -> Option<bool> {
        if seq >= MAX_SEQ {
            return None;
        }
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        let was = self.bits[w] & (1 << b) != 0;
        self.bits[w] |= 1 << b;
        Some(!was)
    }

    fn contains(&self, seq: u64) -> bool {
        let w = (seq / 64) as usize;
        self.bits.get(w).is_some_and(|x| x & (1 << (seq % 64)) != 0)
    }

    /// How many numbers are in `want` but not here (lost), and here but not in `want`.
    fn diff(&self, want: &Self) -> (u64, u64) {
        let n = self.bits.len().max(want.bits.len());
        let word = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        (0..n).fold((0, 0), |(lost, extra), i| {
            let (have, want) = (word(&self.bits, i), word(&want.bits, i));
            (
                lost + u64::from((want & !have).count_ones()),
                extra + u64::from((have & !want).count_ones()),
            )
        })
    }
}

/// Checks [`Seen`]'s set arithmetic (the loss check rests on it).
pub fn selftest() -> Result<(), String> {
    let set = |v: &[u64]| {
        let mut s = Seen::default();
        for &x in v {
            s.insert(x);
        }
        s
    };
    let accepted = set(&[0, 1, 2, 5, 63, 64, 200]);
    let cases: [(&[u64], (u64, u64)); 4] = [
        (&[0, 1, 2, 5, 63, 64, 200], (0, 0)),
        (&[0, 1, 2, 63, 64, 200], (1, 0)),
        (&[0, 1, 2, 3, 5, 63, 64, 200, 300], (0, 2)),
        (&[], (7, 0)),
    ];
    for (received, want) in cases {
        let got = set(received).diff(&accepted);
        if got != want {
            return Err(format!("Seen::diff({received:?}): {got:?}, want {want:?}"));
        }
    }
    if !accepted.contains(64) || accepted.contains(3) || accepted.contains(1 << 20) {
        return Err("Seen::contains".to_owned());
    }
    Ok(())
}

struct StreamCfg {
    /// The servers streams connect to, with their `Host` header.
    subs: Vec<(SocketAddr, String)>,
    topics: usize,
    sub_path: String,
    topic_prefix: String,
    read_buf: usize,
    reconnect: bool,
    src_ips: u8,
    reconnect_every: Option<f64>,
    slow_pause: Duration,
    slow_read: Duration,
    slow_rcvbuf: Option<u32>,
    seed: u64,
    /// Per `subs` entry, the HTTP/2 connections its streams share (empty: HTTP/1.1).
    h2: Vec<Vec<h2::Sender>>,
}

/// An open stream's body: HTTP/1.1 bytes to decode, or an HTTP/2 stream's data frames.
enum Source {
    H1(Conn, BodyDecoder),
    H2(hyper::body::Incoming),
}

/// splitmix64: a small deterministic generator for the per-stream choices.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in [0, 1) from `x`.
fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

fn src_ip(cfg_ips: u8, addr: SocketAddr, i: usize) -> Option<IpAddr> {
    let loopback = matches!(addr.ip(), IpAddr::V4(v4) if v4.is_loopback());
    (loopback && cfg_ips > 0).then(|| {
        let last = (i % usize::from(cfg_ips)) as u8 + 1;
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    })
}

/// Connects to `cfg.subs[sub]` (or takes stream `idx`'s HTTP/2 connection to it), sends
/// the GET, and checks the response is an event stream.
async fn open_stream(
    cfg: &StreamCfg,
    sub: usize,
    idx: usize,
    src: Option<IpAddr>,
    path: &str,
    last_id: Option<&[u8]>,
    slow: bool,
) -> io::Result<Source> {
    if let Some(conns) = cfg.h2.get(sub).filter(|c| !c.is_empty()) {
        let sender = &conns[idx % conns.len()];
        return h2::open(sender, &cfg.subs[sub].1, path, last_id)
            .await
            .map(Source::H2);
    }
    let rcvbuf = if slow { cfg.slow_rcvbuf } else { None };
    let (addr, host) = &cfg.subs[sub];
    let tcp = http::connect_with(*addr, src, rcvbuf).await?;
    let mut conn = Conn::new(tcp, cfg.read_buf);
    let mut req = Vec::with_capacity(256);
    target::subscribe_request(path, host, last_id, &mut req);
    conn.write_all(&req).await?;
    let head = conn.read_head().await?;
    if head.status != 200 || !head.content_type.starts_with("text/event-stream") {
        let mut body = Vec::new();
        if head.framing != Framing::UntilEof {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                conn.read_body(head.framing, &mut body),
            )
            .await;
        }
        return Err(io::Error::other(format!(
            "GET {path}: status {} content-type {:?}: {}",
            head.status,
            head.content_type,
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )));
    }
    Ok(Source::H1(conn, BodyDecoder::new(head.framing)))
}

enum End {
    Stopped,
    Ended,
    /// The load generator's own reconnect deadline (`--reconnect-every`) came.
    Forced,
    Failed(io::Error),
}

/// When a stream next drops its connection, and when a slow one next pauses.
struct Timers {
    rng: u64,
    force_at: Option<Instant>,
    pause_at: Option<Instant>,
}

impl Timers {
    fn next_force(&mut self, every: Option<f64>) {
        self.force_at = every.map(|s| {
            self.rng = mix(self.rng);
            Instant::now() + Duration::from_secs_f64(s * (0.5 + unit(self.rng)))
        });
    }
}

async fn stream_task(
    sh: Arc<Shared>,
    cfg: Arc<StreamCfg>,
    idx: usize,
    topic: usize,
    slow: bool,
    sem: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> StreamResult {
    // Each topic's streams take the servers in turn.
    let sub = idx / cfg.topics % cfg.subs.len();
    let mut res = StreamResult {
        topic,
        sub,
        slow,
        ..StreamResult::default()
    };
    let src = src_ip(cfg.src_ips, cfg.subs[sub].0, idx);
    let path = target::sub_path(&cfg.sub_path, &format!("{}{}", cfg.topic_prefix, topic));
    let opened = {
        let _permit = sem.acquire().await;
        open_stream(&cfg, sub, idx, src, &path, None, slow).await
    };
    let mut source = match opened {
        Ok(c) => Some(c),
        Err(e) => {
            sh.connect_failed.fetch_add(1, Relaxed);
            sh.error(|| format!("stream {idx}: {e}"));
            return res;
        }
    };
    res.connected = true;
    sh.connected_per_topic[topic].fetch_add(1, Relaxed);
    sh.connect_done_us.fetch_max(now_us(), Relaxed);
    sh.connected.fetch_add(1, Relaxed);

    let mut parser = sse::Parser::default();
    let mut seen = Seen::default();
    let stopping = stop.clone();
    let stop_signal = stop.changed();
    tokio::pin!(stop_signal);
    let mut timers = Timers {
        rng: mix(cfg.seed ^ mix(idx as u64)),
        force_at: None,
        pause_at: None,
    };
    timers.next_force(cfg.reconnect_every);
    if slow {
        // Spread the first pauses over one read period.
        timers.rng = mix(timers.rng);
        timers.pause_at = Some(Instant::now() + cfg.slow_read.mul_f64(unit(timers.rng)));
    }
    while let Some(open) = source.as_mut() {
        let end = read_stream(
            &sh,
            &cfg,
            open,
            &mut parser,
            &mut seen,
            &mut res,
            &mut timers,
            &mut stop_signal,
        )
        .await;
        match end {
            End::Stopped => break,
            End::Ended => res.ends += 1,
            End::Forced => {
                res.forced += 1;
                timers.next_force(cfg.reconnect_every);
            }
            End::Failed(e) => {
                res.errors += 1;
                sh.error(|| format!("stream {idx}: {e}"));
            }
        }
        if !cfg.reconnect || *stopping.borrow() {
            break;
        }
        // Resume where the stream stopped, as a browser would (the old connection is
        // closed when replaced). A few attempts before giving up on the stream.
        if matches!(source, Some(Source::H2(_))) {
            // An HTTP/2 stream holds one of its connection's slots (ssegate allows 1,000 at
            // once): give it back first, or a full connection waits for it forever.
            source = None;
        }
        parser.reset_connection();
        let last_id = parser.last_id().to_vec();
        let mut reopened = false;
        for attempt in 0..5u64 {
            match open_stream(&cfg, sub, idx, src, &path, Some(&last_id), slow).await {
                Ok(s) => {
                    source = Some(s);
                    res.reconnects += 1;
                    reopened = true;
                    break;
                }
                Err(e) => {
                    res.errors += 1;
                    sh.error(|| format!("stream {idx} reconnecting: {e}"));
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
            }
        }
        if !reopened {
            break;
        }
    }
    res.sse = parser.counters;
    res.seen = seen;
    res
}

/// Feeds one piece of a stream's body to its SSE parser and checks every event it
/// completes; returns the events received and how many of them were new.
fn take_events(
    sh: &Shared,
    parser: &mut sse::Parser,
    seen: &mut Seen,
    res: &mut StreamResult,
    now: u64,
    body: &[u8],
) -> (u64, u64) {
    let topic = res.topic;
    let last = sh.last_delivery.get(topic);
    let (mut received, mut new) = (0u64, 0u64);
    parser.feed(body, &mut |ev| match ev.event {
        None | Some(b"message") => {
            let Some((seq, sent)) = target::parse_payload(ev.data) else {
                res.bad_payload += 1;
                return;
            };
            received += 1;
            match seen.insert(seq) {
                Some(true) => {
                    new += 1;
                    match res.max_seq {
                        // With one publisher, any lower number after a higher one is out
                        // of order, accepted or not (as the check always was).
                        Some(m)
                            if seq < m
                                && (sh.in_order
                                    || sh.preceded(topic, seq..seq + 1, res.max_sent)) =>
                        {
                            res.out_of_order += 1;
                        }
                        Some(m) if seq > m + 1 && sh.preceded(topic, m + 1..seq, sent) => {
                            res.gaps += 1;
                            sh.error(|| format!(
                                "gap on topic {topic}: {seq} after {m} (slow {}, {} reconnects, {} ended by the server)",
                                res.slow, res.reconnects, res.ends
                            ));
                        }
                        None if seq > 0 && sh.preceded(topic, 0..seq, sent) => {
                            res.gaps += 1;
                        }
                        _ => {}
                    }
                    if res.max_seq.is_none_or(|m| seq > m) {
                        res.max_seq = Some(seq);
                        res.max_sent = sent;
                    }
                    let lat = now.saturating_sub(sent);
                    sh.latency.record(lat);
                    if let Some(slot) = last.and_then(|l| l.get(seq as usize)) {
                        // Read first: most deliveries of an event are not its last.
                        if slot.load(Relaxed) < lat {
                            slot.fetch_max(lat, Relaxed);
                        }
                    }
                }
                Some(false) => res.dups += 1,
                None => res.out_of_range += 1,
            }
        }
        Some(t) => {
            *res.control
                .entry(String::from_utf8_lossy(t).into_owned())
                .or_default() += 1;
        }
    });
    (received, new)
}

/// Adds what [`take_events`] counted to the run's totals.
fn count_events(sh: &Shared, res: &mut StreamResult, now: u64, (received, new): (u64, u64)) {
    if received > 0 {
        sh.received.fetch_add(received, Relaxed);
        sh.deliveries.fetch_add(new, Relaxed);
        sh.last_delivery_us.fetch_max(now, Relaxed);
        res.distinct += new;
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_stream<F>(
    sh: &Shared,
    cfg: &StreamCfg,
    source: &mut Source,
    parser: &mut sse::Parser,
    seen: &mut Seen,
    res: &mut StreamResult,
    timers: &mut Timers,
    stop: &mut std::pin::Pin<&mut F>,
) -> End
where
    F: std::future::Future,
{
    loop {
        if let Source::H1(conn, dec) = source {
            // Bytes may already be buffered (after the head): decode before reading.
            let now = now_us();
            let mut counts = (0, 0);
            let decoded = dec.decode(conn.buffered(), &mut |body| {
                let (r, n) = take_events(sh, parser, seen, res, now, body);
                counts = (counts.0 + r, counts.1 + n);
            });
            count_events(sh, res, now, counts);
            match decoded {
                Ok((used, done)) => {
                    conn.consume(used);
                    if done {
                        return End::Ended;
                    }
                }
                Err(e) => return End::Failed(e),
            }
        }
        // A slow stream stops reading for a while (the server's buffers fill meanwhile).
        if let Some(at) = timers.pause_at
            && Instant::now() >= at
        {
            res.pauses += 1;
            tokio::select! {
                biased;
                _ = stop.as_mut() => return End::Stopped,
                () = tokio::time::sleep(cfg.slow_pause) => {}
            }
            timers.pause_at = Some(Instant::now() + cfg.slow_read);
        }
        let force = async {
            match timers.force_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        match source {
            Source::H1(conn, dec) => {
                let read = tokio::select! {
                    biased;
                    _ = stop.as_mut() => return End::Stopped,
                    () = force => return End::Forced,
                    r = conn.fill() => r,
                };
                match read {
                    Ok(0) => {
                        return match dec.eof() {
                            Ok(()) => End::Ended,
                            Err(e) => End::Failed(e),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => return End::Failed(e),
                }
            }
            Source::H2(body) => {
                // `frame()` holds no state of its own: dropping it unfinished loses nothing.
                let frame = tokio::select! {
                    biased;
                    _ = stop.as_mut() => return End::Stopped,
                    () = force => return End::Forced,
                    f = body.frame() => f,
                };
                match frame {
                    None => return End::Ended,
                    Some(Err(e)) => return End::Failed(io::Error::other(e)),
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let now = now_us();
                            let counts = take_events(sh, parser, seen, res, now, data);
                            count_events(sh, res, now, counts);
                        }
                    }
                }
            }
        }
    }
}

struct Plan {
    kind: Kind,
    addr: SocketAddr,
    host: String,
    pub_path: Option<String>,
    topics: usize,
    topic_names: Vec<String>,
    size: usize,
    batch: usize,
    rate: f64,
    total: u64,
    deadline: Option<Instant>,
    t0: Instant,
    next: AtomicU64,
}

/// Runs the publishers on a thread and runtime of their own and waits for them. The
/// publishing side stands for an app, which does not share a scheduler with the
/// subscribers: in the streams' runtime a publisher's next request waited behind every
/// reader woken with it (10,000 in S3), so the publish rate fell as soon as deliveries
/// began, whatever the server did.
async fn publish_apart(
    sh: &Arc<Shared>,
    plan: &Arc<Plan>,
    publishers: usize,
) -> Result<(), String> {
    let (sh, plan) = (Arc::clone(sh), Arc::clone(plan));
    let thread = std::thread::Builder::new()
        .name("loadgen-publish".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the publishers' runtime: {e}"))?;
            rt.block_on(async {
                let pubs: Vec<_> = (0..publishers)
                    .map(|_| tokio::spawn(publisher(Arc::clone(&sh), Arc::clone(&plan))))
                    .collect();
                for p in pubs {
                    let _ = p.await;
                }
            });
            Ok(())
        })
        .map_err(|e| format!("cannot start the publishers' thread: {e}"))?;
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| format!("publishers' thread: {e}"))?
        .map_err(|_| "the publishers' thread panicked".to_owned())?
}

async fn publisher(sh: Arc<Shared>, plan: Arc<Plan>) {
    let mut conn: Option<Conn> = None;
    let mut req = Vec::with_capacity(plan.batch * (plan.size + 100) + 256);
    let mut body = Vec::new();
    let mut events: Vec<(usize, u64)> = Vec::with_capacity(plan.batch);
    loop {
        let k = plan.next.fetch_add(plan.batch as u64, Relaxed);
        if k >= plan.total {
            break;
        }
        let n = (plan.batch as u64).min(plan.total - k);
        if plan.rate > 0.0 {
            tokio::time::sleep_until(plan.t0 + Duration::from_secs_f64(k as f64 / plan.rate)).await;
        }
        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        events.clear();
        let t = plan.topics as u64;
        events.extend((k..k + n).map(|j| ((j % t) as usize, j / t)));
        let sent = now_us();
        let out: Vec<Outgoing<'_>> = events
            .iter()
            .map(|&(topic, seq)| Outgoing {
                topic: &plan.topic_names[topic],
                seq,
                sent_us: sent,
            })
            .collect();
        target::publish_request(
            plan.kind,
            plan.pub_path.as_deref(),
            &plan.host,
            &out,
            plan.size,
            &mut req,
        );
        sh.publish_requests.fetch_add(1, Relaxed);
        match publish_once(&mut conn, plan.addr, &req, &mut body).await {
            Ok((status, close)) if (200..300).contains(&status) => {
                let done = now_us();
                sh.publish_rtt.record(done.saturating_sub(sent));
                sh.last_publish_us.fetch_max(done, Relaxed);
                for &(topic, seq) in &events {
                    sh.accepted[topic].fetch_add(1, Relaxed);
                    if let Ok(mut acc) = sh.accepted_seqs[topic].lock() {
                        acc.insert(seq);
                    }
                    let answered = usize::try_from(seq)
                        .ok()
                        .and_then(|i| sh.answered[topic].get(i));
                    if let Some(at) = answered {
                        at.store(done, Release);
                    }
                }
                if close {
                    conn = None;
                }
            }
            Ok((status, _)) => {
                sh.refused(status.to_string(), n);
                sh.error(|| {
                    format!(
                        "publish: status {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )
                });
                conn = None;
            }
            Err(e) => {
                sh.refused("io".to_owned(), n);
                sh.error(|| format!("publish: {e}"));
                conn = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Sends one request on a kept-alive connection (opened when needed); returns the status
/// and whether the server will close the connection. The body lands in `body`.
pub async fn publish_once(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    req: &[u8],
    body: &mut Vec<u8>,
) -> io::Result<(u16, bool)> {
    if conn.is_none() {
        *conn = Some(Conn::new(http::connect(addr, None).await?, 4096));
    }
    let Some(c) = conn.as_mut() else {
        return Err(io::Error::other("no connection"));
    };
    c.write_all(req).await?;
    let head = c.read_head().await?;
    body.clear();
    c.read_body(head.framing, body).await?;
    Ok((head.status, head.close))
}

/// Runs the scenario and prints its report; returns the report as JSON.
pub async fn run(args: RunArgs) -> Result<serde_json::Value, String> {
    if args.topics == 0 || args.publishers == 0 || args.batch == 0 || args.sub_addr.is_empty() {
        return Err("--topics, --publishers, --batch and --sub-addr must be at least 1".to_owned());
    }
    let topic_ok = |c: char| c.is_ascii_alphanumeric() || "/_-.:@".contains(c);
    if !args.topic_prefix.chars().all(topic_ok) {
        return Err("--topic-prefix may only hold A-Z a-z 0-9 / _ - . : @".to_owned());
    }
    if args.topics > 1 && !args.target.has_topics() {
        return Err("this target sends every event to every stream: --topics must be 1".to_owned());
    }
    if args.h2 && args.target != Kind::Ssegate {
        return Err("--h2 is for --target ssegate only".to_owned());
    }
    let batch = if args.target.batches() { args.batch } else { 1 };
    let total = match args.burst {
        Some(k) => k,
        None if args.rate > 0.0 => (args.rate * args.duration).round() as u64,
        None => u64::MAX,
    };
    let rate = if args.burst.is_some() { 0.0 } else { args.rate };
    let server = Server::new(args.pid.clone());
    let me = Server::new(vec![std::process::id()]);
    let per_topic = total.div_ceil(args.topics as u64);
    let track_last = args.streams > 0 && total != u64::MAX && per_topic <= 1 << 22;
    // With several publishers the order check needs every publish's answer time.
    let by_answer = args.streams > 0 && args.publishers > 1;
    if by_answer && !track_last {
        return Err(
            "with streams and several publishers, publish at most 4,194,304 events per topic \
             (--rate and --duration, or --burst)"
                .to_owned(),
        );
    }
    let sh = Arc::new(Shared {
        latency: Histogram::default(),
        publish_rtt: Histogram::default(),
        last_delivery: (0..args.topics)
            .map(|_| {
                let n = if track_last { per_topic as usize } else { 0 };
                (0..n).map(|_| AtomicU64::new(0)).collect()
            })
            .collect(),
        deliveries: AtomicU64::new(0),
        received: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        connect_failed: AtomicUsize::new(0),
        connected_per_topic: (0..args.topics).map(|_| AtomicU64::new(0)).collect(),
        connect_done_us: AtomicU64::new(0),
        accepted: (0..args.topics).map(|_| AtomicU64::new(0)).collect(),
        accepted_seqs: (0..args.topics).map(|_| Mutex::default()).collect(),
        answered: (0..args.topics)
            .map(|_| {
                let n = if by_answer { per_topic as usize } else { 0 };
                (0..n).map(|_| AtomicU64::new(0)).collect()
            })
            .collect(),
        in_order: args.publishers == 1,
        publish_requests: AtomicU64::new(0),
        publish_failed: AtomicU64::new(0),
        publish_refused: Mutex::new(BTreeMap::new()),
        last_publish_us: AtomicU64::new(0),
        first_error: OnceLock::new(),
    });

    // 1. Connect every stream (over HTTP/2: the connections first).
    let rss_before = server.sample();
    let my_connect_start = me.sample();
    // The connect time includes the HTTP/2 connections' handshakes.
    let connect_start = now_us();
    let h2_conns = if args.h2 {
        let per_sub = args.streams.div_ceil(args.sub_addr.len());
        let m = match args.h2_conns {
            0 => per_sub.div_ceil(H2_STREAMS_PER_CONN).max(1),
            m => m,
        };
        if per_sub.div_ceil(m) > H2_STREAMS_PER_CONN {
            eprintln!(
                "loadgen: {} streams per HTTP/2 connection: ssegate allows {H2_STREAMS_PER_CONN} at once, the rest wait for a slot",
                per_sub.div_ceil(m)
            );
        }
        // All at once (a few hundred at most), as the streams' connects would be.
        let opening: Vec<Vec<_>> = args
            .sub_addr
            .iter()
            .map(|&addr| {
                (0..m)
                    .map(|j| tokio::spawn(h2::connect(addr, src_ip(args.src_ips, addr, j))))
                    .collect()
            })
            .collect();
        let mut all = Vec::with_capacity(args.sub_addr.len());
        for (addr, tasks) in args.sub_addr.iter().zip(opening) {
            let mut conns = Vec::with_capacity(m);
            for t in tasks {
                let opened = t
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                conns.push(opened.map_err(|e| format!("h2 connection to {addr}: {e}"))?);
            }
            all.push(conns);
        }
        all
    } else {
        Vec::new()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let cfg = Arc::new(StreamCfg {
        subs: args.sub_addr.iter().map(|a| (*a, a.to_string())).collect(),
        topics: args.topics,
        sub_path: args
            .sub_path
            .clone()
            .unwrap_or_else(|| args.target.default_sub_path().to_owned()),
        topic_prefix: args.topic_prefix.clone(),
        read_buf: args.read_buf,
        reconnect: !args.no_reconnect,
        src_ips: args.src_ips,
        reconnect_every: args.reconnect_every.filter(|s| *s > 0.0),
        slow_pause: Duration::from_millis(args.slow_pause_ms),
        slow_read: Duration::from_millis(args.slow_read_ms.max(1)),
        slow_rcvbuf: (args.slow_rcvbuf > 0).then_some(args.slow_rcvbuf),
        seed: args.seed,
        h2: h2_conns,
    });
    let h2_conns = cfg.h2.iter().map(Vec::len).sum::<usize>();
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        tasks.push(tokio::spawn(stream_task(
            Arc::clone(&sh),
            Arc::clone(&cfg),
            i,
            i % args.topics,
            unit(args.seed ^ mix(i as u64 + 1)) < args.slow_fraction,
            Arc::clone(&sem),
            stop_rx.clone(),
        )));
    }
    let connect_deadline = Instant::now() + Duration::from_secs_f64(args.connect_timeout);
    while sh.connected.load(Relaxed) + sh.connect_failed.load(Relaxed) < args.streams {
        if Instant::now() > connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // CPU of the connect phase (to within the 5 ms of the wait's polling).
    let connect_cpu_secs = [
        server.cpu_secs(rss_before, server.sample()),
        me.cpu_secs(my_connect_start, me.sample()),
    ];
    let connected = sh.connected.load(Relaxed);
    let connect_secs = if connected > 0 {
        sh.connect_done_us
            .load(Relaxed)
            .saturating_sub(connect_start) as f64
            / 1e6
    } else {
        0.0
    };
    if args.streams > 0 {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    }
    let rss_connected = server.sample();

    // 2. Publish.
    let host = args.pub_addr.to_string();
    let t0 = Instant::now();
    let plan = Arc::new(Plan {
        kind: args.target,
        addr: args.pub_addr,
        host,
        pub_path: args.pub_path.clone(),
        topics: args.topics,
        topic_names: (0..args.topics)
            .map(|t| format!("{}{t}", args.topic_prefix))
            .collect(),
        size: args.size,
        batch,
        rate,
        total,
        deadline: (total == u64::MAX).then(|| t0 + Duration::from_secs_f64(args.duration)),
        t0,
        next: AtomicU64::new(0),
    });
    let cpu_start = server.sample();
    let my_cpu_start = me.sample();
    let publish_start = now_us();
    publish_apart(&sh, &plan, args.publishers).await?;
    let publish_end = sh.last_publish_us.load(Relaxed).max(publish_start);

    // 3. Wait for the deliveries.
    let expected: u64 = (0..args.topics)
        .map(|t| sh.accepted[t].load(Relaxed) * sh.connected_per_topic[t].load(Relaxed))
        .sum();
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_max);
    let mut last_seen = sh.deliveries.load(Relaxed);
    let mut last_change = Instant::now();
    while connected > 0 && sh.deliveries.load(Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let d = sh.deliveries.load(Relaxed);
        if d != last_seen {
            last_seen = d;
            last_change = Instant::now();
        }
        let now = Instant::now();
        if now > drain_deadline || now - last_change > Duration::from_secs_f64(args.drain_idle) {
            break;
        }
    }
    let cpu_end = server.sample();
    let my_cpu_secs = me.cpu_secs(my_cpu_start, me.sample());
    let rss_delivered = cpu_end;
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = t.await {
            results.push(r);
        }
    }

    // 4. Report.
    let report = Report {
        args: &args,
        sh: &sh,
        server: &server,
        results: &results,
        connected,
        connect_secs,
        connect_cpu_secs,
        rss: [rss_before, rss_connected, rss_delivered],
        cpu: [cpu_start, cpu_end],
        my_cpu_secs,
        publish_start,
        publish_end,
        expected,
        batch,
        h2_conns,
    };
    Ok(report.print())
}

struct Report<'a> {
    args: &'a RunArgs,
    sh: &'a Shared,
    server: &'a Server,
    results: &'a [StreamResult],
    connected: usize,
    connect_secs: f64,
    /// CPU seconds the server and the load generator spent while the streams connected.
    connect_cpu_secs: [f64; 2],
    rss: [Sample; 3],
    cpu: [Sample; 2],
    my_cpu_secs: f64,
    publish_start: u64,
    publish_end: u64,
    expected: u64,
    batch: usize,
    /// HTTP/2 connections the streams share (0: HTTP/1.1, one connection per stream).
    h2_conns: usize,
}

impl Report<'_> {
    /// Whether to report fast and slow streams apart (forced reconnects or slow readers).
    fn split(&self) -> bool {
        self.args.slow_fraction > 0.0 || self.args.reconnect_every.is_some()
    }

    /// What `r` lost (accepted for its topic, never received) and received although its
    /// publish was refused (or its answer never came).
    fn check(&self, r: &StreamResult) -> (u64, u64) {
        match self.sh.accepted_seqs[r.topic].lock() {
            Ok(want) => r.seen.diff(&want),
            Err(_) => (0, 0),
        }
    }

    /// Totals over the connected fast (or slow) streams.
    fn group(&self, slow: bool) -> serde_json::Value {
        let (mut streams, mut lost, mut lossy, mut dups, mut ooo, mut gaps) = (0u64, 0, 0, 0, 0, 0);
        let mut unaccepted = 0u64;
        let (mut distinct, mut reconnects, mut forced, mut ends, mut errors, mut pauses) =
            (0u64, 0, 0, 0, 0, 0);
        let (mut bad, mut oor, mut sse_err) = (0u64, 0, 0);
        let mut control: BTreeMap<String, u64> = BTreeMap::new();
        for r in self
            .results
            .iter()
            .filter(|r| r.connected && r.slow == slow)
        {
            streams += 1;
            let (l, extra) = self.check(r);
            lost += l;
            unaccepted += extra;
            lossy += u64::from(l > 0);
            dups += r.dups;
            ooo += r.out_of_order;
            gaps += r.gaps;
            distinct += r.distinct;
            reconnects += r.reconnects;
            forced += r.forced;
            ends += r.ends;
            errors += r.errors;
            pauses += r.pauses;
            bad += r.bad_payload;
            oor += r.out_of_range;
            sse_err += r.sse.errors;
            for (k, v) in &r.control {
                *control.entry(k.clone()).or_default() += v;
            }
        }
        serde_json::json!({
            "streams": streams,
            "lost": lost,
            "lossy_streams": lossy,
            "unaccepted": unaccepted,
            "duplicated": dups,
            "out_of_order": ooo,
            "gaps": gaps,
            "distinct": distinct,
            "reconnects": reconnects,
            "forced": forced,
            "server_ended": ends,
            "errors": errors,
            "pauses": pauses,
            "bad_payloads": bad,
            "out_of_range": oor,
            "sse_errors": sse_err,
            "control": control,
        })
    }

    fn print(&self) -> serde_json::Value {
        let (a, sh) = (self.args, self.sh);
        let accepted: u64 = sh.accepted.iter().map(|x| x.load(Relaxed)).sum();
        let publish_secs = self.publish_end.saturating_sub(self.publish_start) as f64 / 1e6;
        let deliveries = sh.deliveries.load(Relaxed);
        let received = sh.received.load(Relaxed);
        let last = sh.last_delivery_us.load(Relaxed);
        let window_secs = last.saturating_sub(self.publish_start) as f64 / 1e6;
        let cpu_secs = self.server.cpu_secs(self.cpu[0], self.cpu[1]);
        let (mut lost, mut unaccepted) = (0u64, 0u64);
        let (mut dups, mut bad, mut oor, mut reconnects, mut ends, mut errors) = (0, 0, 0, 0, 0, 0);
        // Per `--sub-addr`: streams, distinct deliveries, lost, reconnects.
        let mut per_sub = vec![[0u64; 4]; a.sub_addr.len()];
        let mut sse_err = 0;
        let mut heartbeats = 0;
        let mut lossy_streams = 0;
        let mut control: BTreeMap<String, u64> = BTreeMap::new();
        for r in self.results.iter().filter(|r| r.connected) {
            let (l, extra) = self.check(r);
            lost += l;
            unaccepted += extra;
            lossy_streams += u64::from(l > 0);
            if let Some(p) = per_sub.get_mut(r.sub) {
                for (slot, v) in p.iter_mut().zip([1, r.distinct, l, r.reconnects]) {
                    *slot += v;
                }
            }
            dups += r.dups;
            bad += r.bad_payload;
            oor += r.out_of_range;
            reconnects += r.reconnects;
            ends += r.ends;
            errors += r.errors;
            sse_err += r.sse.errors;
            heartbeats += r.sse.comments;
            for (k, v) in &r.control {
                *control.entry(k.clone()).or_default() += v;
            }
        }
        let last_delivery = Histogram::default();
        for topic in &sh.last_delivery {
            for slot in topic {
                let v = slot.load(Relaxed);
                if v > 0 {
                    last_delivery.record(v);
                }
            }
        }
        let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        // CPU seconds as µs per item (per delivery, event or stream); 0 with no items.
        let us_per = |secs: f64, n: u64| if n > 0 { secs * 1e6 / n as f64 } else { 0.0 };
        let rss_per_stream = if self.connected > 0 {
            (self.rss[1].rss_kb as f64 - self.rss[0].rss_kb as f64) / self.connected as f64
        } else {
            0.0
        };
        let http = match self.h2_conns {
            0 => "HTTP/1.1".to_owned(),
            m => format!("HTTP/2 over {m} connections"),
        };
        let mode = match a.burst {
            Some(k) => format!("burst of {k}"),
            None if a.rate > 0.0 => format!("{} ev/s for {} s", a.rate, a.duration),
            None => format!("as fast as accepted for {} s", a.duration),
        };
        println!(
            "== loadgen run {}: target {:?}, {} streams ({http}) over {} topics, {mode}, {} B, batch {}, {} publishers",
            a.label, a.target, a.streams, a.topics, a.size, self.batch, a.publishers
        );
        if a.streams > 0 {
            println!(
                "connect: {}/{} streams in {:.3} s ({} failed)",
                self.connected,
                a.streams,
                self.connect_secs,
                sh.connect_failed.load(Relaxed)
            );
        }
        println!(
            "publish: {accepted} events accepted in {publish_secs:.3} s = {:.0} ev/s ({} requests, {} events failed); request round trip {}",
            per_sec(accepted, publish_secs),
            sh.publish_requests.load(Relaxed),
            sh.publish_failed.load(Relaxed),
            sh.publish_rtt.summary_ms()
        );
        let refused = sh
            .publish_refused
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        if !refused.is_empty() {
            println!("publish: events refused, by status: {refused:?}");
        }
        if a.streams > 0 {
            println!(
                "deliver: {deliveries}/{} delivered in {window_secs:.3} s = {:.0} deliveries/s; lost {lost} (on {lossy_streams} streams), duplicated {dups}, received though not accepted {unaccepted}",
                self.expected,
                per_sec(received, window_secs)
            );
            if per_sub.len() > 1 {
                for (addr, [n, distinct, l, rec]) in a.sub_addr.iter().zip(&per_sub) {
                    println!(
                        "streams on {addr}: {n}, received {distinct} distinct, lost {l}, {rec} reconnects"
                    );
                }
            }
            println!("latency publish→receive: {}", sh.latency.summary_ms());
            if last_delivery.count() > 0 {
                println!(
                    "latency publish→last delivery of each event: {}",
                    last_delivery.summary_ms()
                );
            }
            println!(
                "streams: {reconnects} reconnects, {ends} ended by server, {errors} errors, {bad} bad payloads, {oor} out-of-range seqs, {sse_err} SSE errors, {heartbeats} comments, control events {control:?}"
            );
            if self.split() {
                for slow in [false, true] {
                    let g = self.group(slow);
                    println!(
                        "{} streams: {} (connected), lost {} (on {} streams), received though not accepted {}, duplicated {}, out of order {}, gaps {}, received {} distinct, {} reconnects ({} forced, {} after the server ended the stream, {} errors), {} pauses, control events {}",
                        if slow { "slow" } else { "fast" },
                        g["streams"],
                        g["lost"],
                        g["lossy_streams"],
                        g["unaccepted"],
                        g["duplicated"],
                        g["out_of_order"],
                        g["gaps"],
                        g["distinct"],
                        g["reconnects"],
                        g["forced"],
                        g["server_ended"],
                        g["errors"],
                        g["pauses"],
                        g["control"],
                    );
                }
            }
        }
        if self.server.is_set() {
            println!(
                "server: RSS {} KB before, {} KB connected ({rss_per_stream:.2} KB/stream), {} KB after delivery; CPU {cpu_secs:.2} s over the window = {:.2} µs/delivery, {:.2} µs/accepted event",
                self.rss[0].rss_kb,
                self.rss[1].rss_kb,
                self.rss[2].rss_kb,
                us_per(cpu_secs, deliveries),
                us_per(cpu_secs, accepted)
            );
        }
        println!(
            "loadgen itself: CPU {:.2} s over the window = {:.2} µs/delivery",
            self.my_cpu_secs,
            us_per(self.my_cpu_secs, deliveries)
        );
        if let Some(e) = sh.first_error.get() {
            println!("first error: {e}");
        }
        let groups = if self.split() {
            serde_json::json!({"fast": self.group(false), "slow": self.group(true)})
        } else {
            serde_json::Value::Null
        };
        serde_json::json!({
            "groups": groups,
            "label": a.label,
            "target": format!("{:?}", a.target).to_lowercase(),
            "streams": a.streams,
            "h2_conns": self.h2_conns,
            "topics": a.topics,
            "mode": mode,
            "size": a.size,
            "batch": self.batch,
            "publishers": a.publishers,
            "connected": self.connected,
            "connect_failed": sh.connect_failed.load(Relaxed),
            "connect_s": self.connect_secs,
            "connect_cpu_us_per_stream": us_per(self.connect_cpu_secs[0], self.connected as u64),
            "loadgen_connect_cpu_us_per_stream": us_per(self.connect_cpu_secs[1], self.connected as u64),
            "accepted": accepted,
            "publish_s": publish_secs,
            "publish_per_s": per_sec(accepted, publish_secs),
            "publish_failed": sh.publish_failed.load(Relaxed),
            "publish_refused": refused,
            "publish_rtt": sh.publish_rtt.json_ms(),
            "expected": self.expected,
            "delivered": deliveries,
            "received": received,
            "window_s": window_secs,
            "deliveries_per_s": per_sec(received, window_secs),
            "lost": lost,
            "unaccepted": unaccepted,
            "duplicated": dups,
            "by_sub_addr": a.sub_addr.iter().zip(&per_sub).map(|(addr, [n, distinct, l, rec])| {
                serde_json::json!({"addr": addr.to_string(), "streams": n, "distinct": distinct, "lost": l, "reconnects": rec})
            }).collect::<Vec<_>>(),
            "latency": sh.latency.json_ms(),
            "last_delivery": last_delivery.json_ms(),
            "reconnects": reconnects,
            "server_ended": ends,
            "stream_errors": errors,
            "comments": heartbeats,
            "sse_errors": sse_err,
            "control": control,
            "rss_kb": [self.rss[0].rss_kb, self.rss[1].rss_kb, self.rss[2].rss_kb],
            "kb_per_stream": rss_per_stream,
            "server_cpu_s": cpu_secs,
            "cpu_us_per_delivery": us_per(cpu_secs, deliveries),
            "loadgen_cpu_s": self.my_cpu_secs,
            "cpu_us_per_event": us_per(cpu_secs, accepted),
            "latency_last_ms": ms(last_delivery.quantile(0.99)),
        })
    }
}
