//! Readiness for long-lived event stream sockets from an epoll set of ssegate's own,
//! instead of tokio's registration.
//!
//! tokio keeps a `ScheduledIo` per registered socket (256 bytes, cache-line aligned, behind
//! an `Arc`), sized for sockets that are read and written all the time. An event stream's
//! socket is written mostly by the dispatchers while it is parked and read only to learn
//! that the client left, so what it needs from a reactor is small: a few readiness bits and
//! its task's waker. [`Poller`] keeps exactly that in the socket's own allocation
//! ([`Socket`]), and one thread per listener waits on the epoll set and wakes the tasks
//! whose sockets changed. Those events are rare (a client leaving, a full socket draining):
//! the thread sleeps while streams are idle and while the dispatchers write to them.
//!
//! Readiness follows tokio's rules: edge-triggered events set bits, an operation that
//! would block clears them, and a tick taken with the bits keeps an event that arrives
//! between the operation and the clearing from being lost.

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use std::io::{self, IoSlice, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

/// The socket can be read (or the peer closed, or an error is pending).
const READ: u32 = 1;
/// The socket can be written (or an error is pending).
const WRITE: u32 = 2;
/// The socket's registration asks for write readiness too: only once a write would have
/// blocked (a new socket is writable, and an edge for that on each connect would wake the
/// poller thread once per new stream for nothing).
const WATCHING_WRITES: u32 = 4;
/// The bits above that are flags, not a count.
const FLAGS: u32 = READ | WRITE | WATCHING_WRITES;
/// The rest of [`Socket::ready`] counts readiness events.
const TICK: u32 = 8;

/// Events taken from the epoll set per pass.
const EVENTS: usize = 256;

/// The token of [`Shared::stop`]; a socket's token is its descriptor's number, unique
/// among open sockets (a slot is freed before its descriptor is closed).
const STOP: Token = Token(usize::MAX);

/// The epoll set that event stream sockets are moved to once their response head is
/// decided. Dropping the last handle (the listener's, and each socket's) stops its thread.
#[derive(Clone)]
pub(crate) struct Poller(Arc<Shared>);

struct Shared {
    registry: mio::Registry,
    sockets: Mutex<Slots>,
    stop: mio::Waker,
}

/// The registered sockets, by token.
#[derive(Default)]
struct Slots {
    by_token: Vec<Option<Weak<Socket>>>,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // If this fails the thread is already gone.
        let _ = self.stop.wake();
    }
}

impl Poller {
    /// A new epoll set and the thread that waits on it.
    pub(crate) fn start() -> io::Result<Self> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let stop = mio::Waker::new(poll.registry(), STOP)?;
        let shared = Arc::new(Shared {
            registry,
            sockets: Mutex::default(),
            stop,
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("ssegate-poller".into())
            .spawn(move || wait(poll, &weak))?;
        Ok(Self(shared))
    }

    /// Moves `stream` from tokio's reactor to this epoll set.
    pub(crate) fn adopt(&self, stream: tokio::net::TcpStream) -> io::Result<Arc<Socket>> {
        let io = stream.into_std()?;
        let fd = io.as_raw_fd();
        let token = usize::try_from(fd).map_err(|_| io::Error::other("negative descriptor"))?;
        let socket = Arc::new(Socket {
            io,
            // Writable until a write says otherwise: a new stream writes its head at once.
            // Whether the client already left is reported by the registration itself.
            ready: AtomicU32::new(WRITE),
            waker: Mutex::new(None),
            poller: self.clone(),
        });
        let mut slots = self.0.slots();
        if slots.by_token.len() <= token {
            slots.by_token.resize(token + 1, None);
        }
        slots.by_token[token] = Some(Arc::downgrade(&socket));
        drop(slots);
        // On failure the socket is dropped, which frees its token again.
        self.0
            .registry
            .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)?;
        Ok(socket)
    }
}

/// Waits for readiness events on the epoll set and wakes the tasks of their sockets,
/// until the last [`Poller`] handle is gone.
fn wait(mut poll: mio::Poll, shared: &Weak<Shared>) {
    let mut events = Events::with_capacity(EVENTS);
    let mut woken = Vec::with_capacity(EVENTS);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "the stream socket poller failed; streams learn of closed clients only when a write fails");
            return;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let slots = shared.slots();
        for event in &events {
            if event.token() == STOP {
                continue;
            }
            let mut bits = 0;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                bits |= READ;
            }
            if event.is_writable() || event.is_write_closed() || event.is_error() {
                bits |= WRITE;
            }
            let socket = slots
                .by_token
                .get(event.token().0)
                .and_then(|s| s.as_ref()?.upgrade());
            if let Some(socket) = socket {
                woken.push((socket, bits));
            }
        }
        drop(slots);
        drop(shared);
        // Outside the lock: dropping the last reference to a socket frees its token.
        for (socket, bits) in woken.drain(..) {
            socket.became_ready(bits);
        }
    }
}

/// An event stream's socket, registered with a [`Poller`]: shared by the stream's task and
/// the dispatchers that write to it while the stream is parked. Closed when dropped.
pub(crate) struct Socket {
    io: std::net::TcpStream,
    /// [`FLAGS`], plus a count of readiness events in multiples of [`TICK`].
    ready: AtomicU32,
    /// The stream task's waker, woken on any readiness event.
    waker: Mutex<Option<Waker>>,
    poller: Poller,
}

/// The readiness seen by a poll: the tick it carries decides whether a `WouldBlock` may
/// clear it.
#[derive(Clone, Copy)]
struct Seen(u32);

impl Socket {
    fn became_ready(&self, bits: u32) {
        let _ = self
            .ready
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                Some((r & !FLAGS).wrapping_add(TICK) | (r & FLAGS) | bits)
            });
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ready once one of `bits` is set; otherwise the task is woken at the next event.
    fn poll_ready(&self, cx: &mut Context<'_>, bits: u32) -> Poll<Seen> {
        let r = self.ready.load(Ordering::Acquire);
        if r & bits != 0 {
            return Poll::Ready(Seen(r));
        }
        {
            let mut waker = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        // An event between the first look and the waker's registration woke nobody.
        let r = self.ready.load(Ordering::Acquire);
        if r & bits != 0 {
            Poll::Ready(Seen(r))
        } else {
            Poll::Pending
        }
    }

    /// Clears `bits` after an operation would have blocked, unless an event came since
    /// `seen` was taken.
    fn clear(&self, seen: Seen, bits: u32) {
        let _ = self.ready.compare_exchange(
            seen.0,
            seen.0 & !bits,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Ready once the client has gone: it sends nothing after its request, so EOF or an
    /// error means it left; stray bytes are read and ignored.
    pub(crate) fn poll_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut probe = [0u8; 16];
        loop {
            let Poll::Ready(seen) = self.poll_ready(cx, READ) else {
                return Poll::Pending;
            };
            match (&self.io).read(&mut probe) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.clear(seen, READ),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Poll::Ready(()),
            }
        }
    }

    /// A vectored write as `sendmsg()` once the socket is writable (the socket layer
    /// directly, not `writev()` through the file layer, whose file lookup and position lock
    /// cost ~9% of a fan-out's CPU).
    pub(crate) fn poll_send_vectored(
        &self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let Poll::Ready(seen) = self.poll_ready(cx, WRITE) else {
                return Poll::Pending;
            };
            match socket2::SockRef::from(&self.io).send_vectored(slices) {
                // Stale readiness (or a dispatcher filled the socket): wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if seen.0 & WATCHING_WRITES == 0 {
                        // The first full socket: from now on its drain wakes the task. A
                        // change of registration reports a socket already writable again.
                        if let Err(e) = self.watch_writes() {
                            return Poll::Ready(Err(e));
                        }
                    }
                    self.clear(seen, WRITE);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                done => return Poll::Ready(done),
            }
        }
    }

    /// Asks the epoll set for this socket's write readiness as well.
    fn watch_writes(&self) -> io::Result<()> {
        let fd = self.io.as_raw_fd();
        let token = usize::try_from(fd).map_err(|_| io::Error::other("negative descriptor"))?;
        self.poller.0.registry.reregister(
            &mut SourceFd(&fd),
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.ready.fetch_or(WATCHING_WRITES, Ordering::AcqRel);
        Ok(())
    }

    /// One `send()` that does not wait: how much of `buf` the socket took (0 when it is
    /// full or failed; the task finds out which at its next write).
    pub(crate) fn send_now(&self, buf: &[u8]) -> usize {
        socket2::SockRef::from(&self.io).send(buf).unwrap_or(0)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // Closing the descriptor (after this) takes it out of the epoll set; a socket that
        // takes its number afterwards takes its slot.
        let slot = usize::try_from(self.io.as_raw_fd()).unwrap_or(usize::MAX);
        if let Some(slot) = self.poller.0.slots().by_token.get_mut(slot) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the client, and the server's side adopted by `poller`.
    async fn pair(poller: &Poller) -> (TcpStream, Arc<Socket>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, poller.adopt(server).unwrap())
    }

    /// Fails the test instead of hanging it if a wake-up is lost.
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("a readiness event woke the task")
    }

    #[tokio::test]
    async fn a_client_that_leaves_is_seen_and_stray_bytes_are_not_a_leave() {
        let poller = Poller::start().unwrap();
        let (mut client, socket) = pair(&poller).await;
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            socket.poll_gone(&mut cx).is_pending(),
            "connected: not gone"
        );
        // Stray bytes wake the task, which reads them and waits again: polled until they
        // have been taken from the socket, never gone.
        client.write_all(b"stray").await.unwrap();
        within(poll_fn(|cx| {
            assert!(
                socket.poll_gone(cx).is_pending(),
                "stray bytes are not a leave"
            );
            let mut peek = [0u8; 8];
            match socket.io.peek(&mut peek) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(()),
                _ => Poll::Pending,
            }
        }))
        .await;
        drop(client);
        within(poll_fn(|cx| socket.poll_gone(cx))).await;
    }

    #[tokio::test]
    async fn a_full_socket_is_written_again_once_the_client_reads() {
        let poller = Poller::start().unwrap();
        let (mut client, socket) = pair(&poller).await;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        let mut cx = Context::from_waker(Waker::noop());
        // The client reads nothing: the socket fills up.
        while let Poll::Ready(n) = socket.poll_send_vectored(&mut cx, &[IoSlice::new(&chunk)]) {
            sent += n.unwrap();
        }
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0usize;
            while got < sent + chunk.len() {
                got += client.read(&mut buf).await.unwrap();
            }
            got
        });
        let more = within(poll_fn(|cx| {
            socket.poll_send_vectored(cx, &[IoSlice::new(&[b'y'; 64 * 1024])])
        }))
        .await
        .unwrap();
        assert!(more > 0);
        // The rest of the last chunk, so the reader's count is met.
        let mut rest = 64 * 1024 - more;
        while rest > 0 {
            rest -= within(poll_fn(|cx| {
                socket.poll_send_vectored(cx, &[IoSlice::new(&vec![b'y'; rest])])
            }))
            .await
            .unwrap();
        }
        assert_eq!(within(reader).await.unwrap(), sent + 64 * 1024);
    }

    #[tokio::test]
    async fn slots_follow_descriptors_and_the_thread_stops_with_the_last_handle() {
        let poller = Poller::start().unwrap();
        let slot = |socket: &Arc<Socket>| {
            let fd = usize::try_from(socket.io.as_raw_fd()).unwrap();
            poller.0.slots().by_token[fd].clone()
        };
        let (_c1, s1) = pair(&poller).await;
        let fd1 = usize::try_from(s1.io.as_raw_fd()).unwrap();
        assert!(slot(&s1).is_some_and(|w| w.ptr_eq(&Arc::downgrade(&s1))));
        drop(s1);
        assert!(
            poller.0.slots().by_token[fd1].is_none(),
            "a dropped socket frees its slot"
        );
        let (c2, s2) = pair(&poller).await;
        assert!(slot(&s2).is_some_and(|w| w.ptr_eq(&Arc::downgrade(&s2))));
        drop(c2);
        within(poll_fn(|cx| s2.poll_gone(cx))).await;
        let stopped = Arc::downgrade(&poller.0);
        drop(poller);
        drop(s2);
        // The thread may still hold the socket it just woke the task of: until it lets go.
        within(poll_fn(|cx| {
            if stopped.upgrade().is_none() {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }))
        .await;
    }
}
