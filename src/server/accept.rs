//! Accepting through running out of file descriptors: waiting connections are answered
//! 503 and closed instead of hanging in the backlog, and accepting resumes by itself.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections, and keeps accepting through running out of file descriptors.
///
/// When `accept` fails with EMFILE/ENFILE the connection stays in the kernel's backlog, and
/// its client would wait, unanswered, until a descriptor is freed. Instead, a spare
/// descriptor held for the purpose is given up to take each waiting connection, answer it
/// 503 and close it, and is then taken back; the connections already open keep working.
pub(super) struct Acceptor {
    listener: TcpListener,
    spare: Option<std::fs::File>,
    /// Connections refused since accepting started failing (`None` while it works).
    refused: Option<u64>,
}

/// What a connection refused for lack of file descriptors is told before it is closed.
const NO_DESCRIPTORS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
    connection: close\r\ncontent-length: 0\r\n\r\n";

impl Acceptor {
    pub(super) fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            spare: spare_descriptor(),
            refused: None,
        }
    }

    /// The next connection. Accept errors back off briefly instead of spinning, and are
    /// logged once per episode rather than once per attempt.
    pub(super) async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if let Some(refused) = self.refused.take() {
                        tracing::info!(refused, "accepting connections again");
                    }
                    let _ = stream.set_nodelay(true);
                    return (stream, peer);
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    if self.refused.is_none() {
                        tracing::warn!(error = %e, "accept failed; refusing new connections until it works again");
                    }
                    let shed = if is_out_of_descriptors(&e) {
                        self.shed()
                    } else {
                        0
                    };
                    *self.refused.get_or_insert(0) += shed;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Refuses the connections waiting in the backlog with the spare descriptor; returns
    /// how many.
    fn shed(&mut self) -> u64 {
        if self.spare.take().is_none() {
            // Taken by someone else when it was last freed: try to get it back for next time.
            self.spare = spare_descriptor();
            return 0;
        }
        let mut refused = 0;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while refused < 1024 {
            let Poll::Ready(Ok((stream, _))) = self.listener.poll_accept(&mut cx) else {
                break;
            };
            refused += 1;
            // Plain non-blocking calls: tokio's `try_*` would not even try on a socket the
            // reactor has not reported ready yet.
            let Ok(mut stream) = stream.into_std() else {
                continue;
            };
            // Read what the client sent so far, so that closing sends FIN rather than RST
            // and the 503 arrives.
            let mut buf = [0u8; 4096];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            let _ = stream.write(NO_DESCRIPTORS);
        }
        self.spare = spare_descriptor();
        refused
    }
}

/// A descriptor to give up when the process has none left.
fn spare_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// EMFILE (the process's limit) or ENFILE (the system's): 24 and 23 on Linux and the BSDs.
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Errors that concern only the connection being accepted (it was reset while waiting).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
