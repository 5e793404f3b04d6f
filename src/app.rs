//! Wires the parts together: binds both listeners, starts the hub, serves until shutdown.
//! The only module that sees them all.

use crate::admin::Admin;
use crate::config::{self, Config};
use crate::hub::{Hub, HubSettings, SlowConsumer};
use crate::metrics::Metrics;
use crate::proxy::Public;
use crate::server;
use crate::shutdown::{self, Shutdown};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinHandle;

/// A running instance: its bound addresses and the handle to stop it.
pub struct Running {
    /// Where the public listener is bound (port 0 resolved).
    pub proxy_addr: SocketAddr,
    /// Where the internal listener is bound.
    pub admin_addr: SocketAddr,
    /// The instance's hub.
    pub hub: Hub,
    shutdown: Shutdown,
    grace: std::time::Duration,
    retry: std::time::Duration,
    servers: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts the shutdown: `/readyz` turns 503, new streams are refused, every stream gets
    /// `ssegate.shutdown`, the listeners stop accepting and drain.
    pub fn shutdown(&self) {
        if !self.shutdown.is_triggered() {
            self.shutdown.trigger();
            let n = self.hub.shutdown(self.retry, self.retry.min(std::time::Duration::from_secs(5)));
            tracing::info!(streams = n, grace = ?self.grace, "shutting down");
        }
    }

    /// Waits until both listeners have drained (at most the grace period after shutdown).
    pub async fn wait(self) {
        for s in self.servers {
            let _ = s.await;
        }
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully; a second signal exits
    /// at once.
    pub async fn run_until_signal(self) {
        let name = shutdown::signal().await;
        tracing::info!(signal = name, "signal received");
        self.shutdown();
        tokio::select! {
            () = self.wait() => {}
            name = shutdown::signal() => {
                tracing::warn!(signal = name, "second signal: exiting now");
            }
        }
    }
}

/// Converts the `events` section into hub settings.
pub fn hub_settings(config: &Config) -> HubSettings {
    let e = &config.events;
    HubSettings {
        history_max_events: e.history.max_events,
        history_max_age: e.history.max_age,
        subscriber_buffer: e.subscriber_buffer,
        slow_consumer: match e.slow_consumer {
            config::SlowConsumer::Disconnect => SlowConsumer::Disconnect,
            config::SlowConsumer::DropOldest => SlowConsumer::DropOldest,
        },
        heartbeat: e.heartbeat,
        retry: e.retry,
        ..HubSettings::default()
    }
}

/// Binds both listeners and starts serving. Errors are one line naming the cause.
pub async fn start(config: Config) -> Result<Running, String> {
    let proxy_listener = server::bind("listen", config.listen).await?;
    let admin_listener = server::bind("admin_listen", config.admin_listen).await?;
    let proxy_addr = proxy_listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::start(hub_settings(&config), Arc::clone(&metrics));
    let shutdown = Shutdown::new();
    let grace = config.shutdown.grace;

    let public = Arc::new(Public::new(
        &config,
        hub.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let admin = Arc::new(Admin {
        hub: hub.clone(),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown.clone(),
        publish_token: config.publish.token.clone(),
        max_body: config.publish.max_body,
        max_event_bytes: config.publish.max_event_bytes,
        started: Instant::now(),
    });
    let servers = vec![
        tokio::spawn(server::serve(
            proxy_listener,
            public,
            shutdown.clone(),
            grace,
        )),
        tokio::spawn(server::serve(
            admin_listener,
            admin,
            shutdown.clone(),
            grace,
        )),
    ];
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, upstream = %config.upstream, "listening");
    Ok(Running {
        proxy_addr,
        admin_addr,
        hub,
        shutdown,
        grace,
        retry: config.events.retry,
        servers,
    })
}
