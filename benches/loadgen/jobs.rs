//! The job-topic scenario (ssegate only): for i in 0..count, open a stream on `job/i`,
//! publish `{"topic":"job/i","data":"done","close":true}`, read the event, and see the
//! server end the stream; a few workers at once. The server's RSS is sampled before, right
//! after, with every connection closed, and then over a wait (long enough for the history
//! to expire when the server runs with a small `history.max_events`/`max_age`), to show
//! that created-and-closed topics leave no memory behind.

use crate::http::{self, Conn};
use crate::run::publish_once;
use crate::sse;
use crate::stats::{Histogram, Server, now_us};
use crate::target;
use clap::Args;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;

/// Options of `loadgen jobs`.
#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    /// ssegate's public listener.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub sub_addr: SocketAddr,
    /// ssegate's admin listener (publish, /stats).
    #[arg(long, default_value = "127.0.0.1:18081")]
    pub pub_addr: SocketAddr,
    /// Jobs to run.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Jobs in flight at once (one stream and one publish connection each, kept alive).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Topic of job i: this prefix followed by i.
    #[arg(long, default_value = "job/")]
    pub prefix: String,
    /// Subscribe path template; `{topic}` is replaced.
    #[arg(long, default_value = "/events/{topic}")]
    pub sub_path: String,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N, one per worker round robin.
    #[arg(long, default_value_t = 8)]
    pub src_ips: u8,
    /// Server process id(s) to sample.
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Seconds to keep sampling RSS after the jobs (history expiry).
    #[arg(long, default_value_t = 30.0)]
    pub wait: f64,
    /// Seconds between RSS samples during the wait.
    #[arg(long, default_value_t = 5.0)]
    pub sample_every: f64,
    /// A job taking longer than this many seconds fails.
    #[arg(long, default_value_t = 10.0)]
    pub job_timeout: f64,
}

struct Shared {
    next: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    latency: Histogram,
    first_error: std::sync::Mutex<Option<String>>,
}

async fn one_job(
    a: &JobsArgs,
    stream: &mut Option<Conn>,
    publish: &mut Option<Conn>,
    src: Option<IpAddr>,
    topic: &str,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    if stream.is_none() {
        *stream = Some(Conn::new(http::connect(a.sub_addr, src).await?, 4096));
    }
    let Some(conn) = stream.as_mut() else {
        return Err(io::Error::other("no stream connection"));
    };
    let host = a.sub_addr.to_string();
    target::subscribe_request(&target::sub_path(&a.sub_path, topic), &host, None, buf);
    conn.write_all(buf).await?;
    let head = conn.read_head().await?;
    if head.status != 200 {
        return Err(io::Error::other(format!("GET: status {}", head.status)));
    }
    let server_closes = head.close;
    target::close_request(topic, &a.pub_addr.to_string(), buf);
    let mut body = Vec::new();
    let (status, pub_close) = publish_once(publish, a.pub_addr, buf, &mut body).await?;
    if pub_close {
        *publish = None;
    }
    if status != 200 {
        return Err(io::Error::other(format!(
            "publish: status {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let mut dec = http::BodyDecoder::new(head.framing);
    let mut parser = sse::Parser::default();
    let mut done_seen = false;
    loop {
        let (used, done) = dec.decode(conn.buffered(), &mut |b| {
            parser.feed(b, &mut |ev| done_seen |= ev.data == b"done");
        })?;
        conn.consume(used);
        if done {
            break;
        }
        if conn.fill().await? == 0 {
            dec.eof()?;
            break;
        }
    }
    if server_closes || head.framing == http::Framing::UntilEof {
        *stream = None;
    }
    if !done_seen {
        return Err(io::Error::other("the stream ended without the job's event"));
    }
    Ok(())
}

async fn worker(sh: Arc<Shared>, a: Arc<JobsArgs>, w: usize) {
    let src = (a.src_ips > 0).then(|| {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            (w % usize::from(a.src_ips)) as u8 + 1,
        ))
    });
    let mut stream = None;
    let mut publish = None;
    let mut buf = Vec::with_capacity(512);
    loop {
        let i = sh.next.fetch_add(1, Relaxed);
        if i >= a.count {
            break;
        }
        let topic = format!("{}{i}", a.prefix);
        let start = now_us();
        let r = tokio::time::timeout(
            Duration::from_secs_f64(a.job_timeout),
            one_job(&a, &mut stream, &mut publish, src, &topic, &mut buf),
        )
        .await
        .unwrap_or_else(|_| Err(io::Error::other("job timed out")));
        match r {
            Ok(()) => {
                sh.ok.fetch_add(1, Relaxed);
                sh.latency.record(now_us().saturating_sub(start));
            }
            Err(e) => {
                sh.failed.fetch_add(1, Relaxed);
                if let Ok(mut fe) = sh.first_error.lock() {
                    fe.get_or_insert_with(|| format!("{topic}: {e}"));
                }
                stream = None;
                publish = None;
            }
        }
    }
}

/// Opens one stream on `{prefix}poke`, reads its head, and closes it.
async fn poke(a: &JobsArgs) -> io::Result<()> {
    let mut conn = Conn::new(http::connect(a.sub_addr, None).await?, 4096);
    let mut req = Vec::new();
    let path = target::sub_path(&a.sub_path, &format!("{}poke", a.prefix));
    target::subscribe_request(&path, &a.sub_addr.to_string(), None, &mut req);
    conn.write_all(&req).await?;
    let head = conn.read_head().await?;
    if head.status != 200 {
        return Err(io::Error::other(format!(
            "GET {path}: status {}",
            head.status
        )));
    }
    Ok(())
}

/// `/stats` of the admin listener: (topics, history events), if it answers.
async fn stats(addr: SocketAddr) -> Option<(u64, u64)> {
    let mut conn = None;
    let mut body = Vec::new();
    let req = target::get_request("/stats", &addr.to_string());
    publish_once(&mut conn, addr, &req, &mut body).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some((v["topics"].as_u64()?, v["history"]["events"].as_u64()?))
}

/// Runs the scenario and prints its report; returns it as JSON.
pub async fn run(a: JobsArgs) -> Result<serde_json::Value, String> {
    let server = Server::new(a.pid.clone());
    let a = Arc::new(a);
    let sh = Arc::new(Shared {
        next: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latency: Histogram::default(),
        first_error: std::sync::Mutex::new(None),
    });
    let before = server.sample().rss_kb;
    let stats_before = stats(a.pub_addr).await;
    let start = Instant::now();
    let workers: Vec<_> = (0..a.concurrency.max(1))
        .map(|w| tokio::spawn(worker(Arc::clone(&sh), Arc::clone(&a), w)))
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let after = server.sample().rss_kb;
    let stats_after = stats(a.pub_addr).await;
    let (ok, failed) = (sh.ok.load(Relaxed), sh.failed.load(Relaxed));
    println!(
        "== loadgen jobs: {ok} ok, {failed} failed in {secs:.2} s = {:.0} jobs/s, concurrency {}; job time {}",
        ok as f64 / secs.max(1e-9),
        a.concurrency,
        sh.latency.summary_ms()
    );
    if let Ok(e) = sh.first_error.lock()
        && let Some(e) = e.as_ref()
    {
        println!("first error: {e}");
    }
    let show = |s: Option<(u64, u64)>| {
        s.map_or_else(
            || "n/a".to_owned(),
            |(t, h)| format!("{t} topics, {h} events in history"),
        )
    };
    println!(
        "server RSS: before {before} KB ({}), right after the jobs {after} KB ({}), delta {} KB",
        show(stats_before),
        show(stats_after),
        after as i64 - before as i64
    );
    // The workers' connections are closed now; follow the RSS while the history expires.
    let mut samples = vec![serde_json::json!({"t_s": 0.0, "rss_kb": after, "stats": stats_after})];
    let wait_start = Instant::now();
    let every = Duration::from_secs_f64(a.sample_every.max(0.1));
    while wait_start.elapsed().as_secs_f64() < a.wait {
        tokio::time::sleep(every).await;
        let rss = server.sample().rss_kb;
        let st = stats(a.pub_addr).await;
        let t = wait_start.elapsed().as_secs_f64();
        println!(
            "  +{t:.0} s: RSS {rss} KB (delta {} KB), {}",
            rss as i64 - before as i64,
            show(st)
        );
        samples.push(serde_json::json!({"t_s": t, "rss_kb": rss, "stats": st}));
    }
    // ssegate drops expired history when it next appends or replays, not on a timer: open
    // one stream (a replay) so what expired during the wait is really gone, then sample.
    if let Err(e) = poke(&a).await {
        println!("poke stream failed: {e}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = server.sample().rss_kb;
    let st = stats(a.pub_addr).await;
    println!(
        "after one more stream open (history trimmed): RSS {end} KB (delta {} KB), {}",
        end as i64 - before as i64,
        show(st)
    );
    Ok(serde_json::json!({
        "ok": ok,
        "failed": failed,
        "secs": secs,
        "jobs_per_s": ok as f64 / secs.max(1e-9),
        "job_time": sh.latency.json_ms(),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_end_kb": end,
        "stats_end": st,
        "stats_before": stats_before,
        "samples": samples,
    }))
}
