//! The shutdown switch: flipped once (by a signal or by whoever embeds the app); read by
//! the listeners (stop accepting, drain), `/readyz` (503) and the events path (503).

use std::sync::Arc;
use tokio::sync::watch;

/// A one-way switch from running to shutting down. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    /// Flipped once the public listener has drained: the internal listener lingers until
    /// then so `/readyz` keeps answering 503 during the drain.
    done: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A switch in the running position.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(false).0),
            done: Arc::new(watch::channel(false).0),
        }
    }

    /// Starts the shutdown; later calls do nothing.
    pub fn trigger(&self) {
        self.tx.send_if_modified(|v| !std::mem::replace(v, true));
    }

    /// Whether the shutdown has started.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the shutdown has started.
    pub async fn triggered(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we wait.
        let _ = rx.wait_for(|v| *v).await;
    }
}

impl Shutdown {
    /// Marks the drain of the public listener as finished.
    pub fn finish(&self) {
        self.done.send_replace(true);
    }

    /// Resolves once [`finish`](Self::finish) was called.
    pub async fn finished(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// The process signals ssegate reacts to, installed up front: a signal that arrives between
/// start-up and the first wait is still caught (not met by the default action).
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers for SIGTERM, SIGINT and SIGHUP.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the next SIGTERM or SIGINT, naming it.
    pub async fn terminate(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }

    /// The next signal: a request to stop (`Err` with its name) or SIGHUP (`Ok`).
    pub async fn next(&mut self) -> Result<(), &'static str> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => Err("SIGTERM"),
                _ = self.int.recv() => Err("SIGINT"),
                Some(()) = self.hup.recv() => Ok(()),
            }
        }
        #[cfg(not(unix))]
        {
            Err(self.terminate().await)
        }
    }
}
