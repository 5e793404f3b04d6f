//! Wires the parts together: binds both listeners, starts the hub, serves until shutdown.
//! The only module that sees them all.

use crate::activation::Inherited;
use crate::admin::Admin;
use crate::config::{self, Config};
use crate::dashboard::Dashboard;
use crate::hub::{Hub, HubSettings, SlowConsumer};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::proxy::Public;
use crate::server;
use crate::shutdown::{Shutdown, Signals};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// A running instance: its bound addresses and the handle to stop it.
pub struct Running {
    /// Where the public listener is bound (port 0 resolved).
    pub proxy_addr: SocketAddr,
    /// Where the internal listener is bound.
    pub admin_addr: SocketAddr,
    /// The instance's hub.
    pub hub: Hub,
    public: Arc<Public>,
    admin: Arc<Admin>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    config: Mutex<Config>,
    shutdown: Shutdown,
    grace: std::time::Duration,
    servers: Vec<JoinHandle<()>>,
    _admin_runtime: AdminRuntime,
}

/// The internal listener's runtime: one worker thread of its own, so the webhook is not
/// queued behind fan-out. With everything on one runtime, a publish request waited for the
/// workers to get through every stream woken by the events before it (a webhook p99 of
/// 7 ms at 20 events/s to 1,000 subscribers, 133 ms at 200/s).
struct AdminRuntime(Option<tokio::runtime::Runtime>);

impl Drop for AdminRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another one (tests and
        // `main` drop a `Running` there).
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Running {
    /// Checks in the background that the app accepts a TCP connection, and logs one warning
    /// if it does not, so a missing app shows in the terminal at start rather than only as
    /// 502s in a browser. Readiness does not wait for it. The binary calls it after start;
    /// an embedder (or a test that counts the app's connections) may leave it out.
    pub fn warn_if_upstream_down(&self) {
        let public = Arc::clone(&self.public);
        tokio::spawn(async move { public.warn_if_upstream_down().await });
    }

    /// Starts the shutdown: `/readyz` turns 503, new streams are refused, every stream gets
    /// `ssegate.shutdown`, the listeners stop accepting and drain.
    pub fn shutdown(&self) {
        if !self.shutdown.is_triggered() {
            self.shutdown.trigger();
            let retry = self
                .config
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .events
                .retry;
            let n = self
                .hub
                .shutdown(retry, retry.min(std::time::Duration::from_secs(5)));
            tracing::info!(streams = n, grace = ?self.grace, "shutting down");
        }
    }

    /// Applies a re-read configuration without dropping any connection: limits, rate
    /// limits, auth keys, CORS, the publish token and sizes. Returns the keys whose change
    /// needs a restart (they keep their old values); on error nothing changes.
    pub fn reload(&self, new: Config) -> Result<Vec<&'static str>, crate::auth::KeyError> {
        self.public.reload(&new)?;
        self.limits.update(&new.limits);
        self.metrics.tenants().configure(
            new.tenants.topic.as_ref(),
            new.limits.max_connections_per_tenant,
        );
        self.metrics.set_max_connections(new.limits.max_connections);
        self.admin.reload(&new);
        self.hub.set_timing(new.events.heartbeat, new.events.retry);
        let mut config = self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut kept = new;
        // Keys that need a restart keep their running values, so a later reload compares
        // against what is really in force.
        let restart = keep_restart_keys(&config, &mut kept);
        *config = kept;
        Ok(restart)
    }

    /// Waits until both listeners have drained (at most the grace period after shutdown).
    pub async fn wait(self) {
        for s in self.servers {
            let _ = s.await;
        }
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully; a second signal exits
    /// at once. SIGHUP re-reads the configuration through `reload`, if given.
    pub async fn run_until_signal(self, mut signals: Signals, reload: Option<Reload>) {
        let name = loop {
            match signals.next().await {
                Err(name) => break name,
                Ok(()) => match &reload {
                    Some(r) => self.apply_reload(r),
                    None => tracing::warn!("SIGHUP ignored: no configuration file to re-read"),
                },
            }
        };
        tracing::info!(signal = name, "signal received");
        self.shutdown();
        tokio::select! {
            () = self.wait() => {}
            name = signals.terminate() => {
                tracing::warn!(signal = name, "second signal: exiting now");
            }
        }
    }

    fn apply_reload(&self, reload: &Reload) {
        let new = match (reload.read)() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(errors = %e, "configuration reload refused; the old configuration stays in force");
                return;
            }
        };
        let level = new.log.level.clone();
        match self.reload(new) {
            Ok(restart) => {
                (reload.log_level)(&level);
                if restart.is_empty() {
                    tracing::info!("configuration reloaded");
                } else {
                    tracing::warn!(keys = %restart.join(", "), "configuration reloaded; these changes need a restart and were not applied");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the old configuration stays in force");
            }
        }
    }
}

/// How SIGHUP re-reads the configuration and applies the log level.
pub struct Reload {
    /// Reads and validates the file again; the errors as text on failure.
    pub read: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
    /// Applies `log.level` (the binary owns the logging setup).
    pub log_level: Box<dyn Fn(&str) + Send + Sync>,
}

/// Forgets idle rate-limiter keys and idle tenants every minute, so their memory stays
/// bounded.
async fn housekeeping(limits: Arc<Limits>, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                limits.housekeeping();
                metrics.tenants().housekeeping();
            }
            () = shutdown.triggered() => return,
        }
    }
}

/// Converts the `events` and `broker` sections into hub settings.
pub fn hub_settings(config: &Config) -> HubSettings {
    let e = &config.events;
    HubSettings {
        history_max_events: e.history.max_events,
        history_max_bytes: e.history.max_bytes,
        history_max_age: e.history.max_age,
        subscriber_buffer: e.subscriber_buffer,
        slow_consumer: match e.slow_consumer {
            config::SlowConsumer::Disconnect => SlowConsumer::Disconnect,
            config::SlowConsumer::DropOldest => SlowConsumer::DropOldest,
        },
        heartbeat: e.heartbeat,
        retry: e.retry,
        broker: match config.broker.kind {
            config::BrokerKind::Memory => crate::hub::BrokerSettings::Memory,
            config::BrokerKind::Disk => crate::hub::BrokerSettings::Disk {
                dir: config.broker.disk.dir.clone(),
                sync: match config.broker.disk.sync {
                    config::DiskSync::Always => None,
                    config::DiskSync::Every(d) => Some(d),
                },
            },
            config::BrokerKind::Redis => crate::hub::BrokerSettings::Redis {
                url: config.broker.redis.url.clone(),
                stream: config.broker.redis.stream.clone(),
            },
        },
        ..HubSettings::default()
    }
}

/// The keys that only take effect after a restart: each one that differs between the
/// running `old` and the re-read `new` gets its running value back in `new`, and is named
/// in the result. One list, so what is reported and what is kept cannot drift apart.
pub fn keep_restart_keys(old: &Config, new: &mut Config) -> Vec<&'static str> {
    fn keep<T: PartialEq + Clone>(
        name: &'static str,
        old: &T,
        new: &mut T,
        changed: &mut Vec<&'static str>,
    ) {
        if old != new {
            new.clone_from(old);
            changed.push(name);
        }
    }
    let mut changed = Vec::new();
    let c = &mut changed;
    keep("listen", &old.listen, &mut new.listen, c);
    keep("admin_listen", &old.admin_listen, &mut new.admin_listen, c);
    keep("upstream", &old.upstream, &mut new.upstream, c);
    keep(
        "upstream_timeouts",
        &old.upstream_timeouts,
        &mut new.upstream_timeouts,
        c,
    );
    keep("broker", &old.broker, &mut new.broker, c);
    keep("workers", &old.workers, &mut new.workers, c);
    keep("events.path", &old.events.path, &mut new.events.path, c);
    keep(
        "events.history",
        &old.events.history,
        &mut new.events.history,
        c,
    );
    keep(
        "events.subscriber_buffer",
        &old.events.subscriber_buffer,
        &mut new.events.subscriber_buffer,
        c,
    );
    keep(
        "events.slow_consumer",
        &old.events.slow_consumer,
        &mut new.events.slow_consumer,
        c,
    );
    keep("shutdown.grace", &old.shutdown, &mut new.shutdown, c);
    keep("log.format", &old.log.format, &mut new.log.format, c);
    changed
}

/// Why ssegate could not start. Each says its cause in one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be opened.
    #[error(transparent)]
    Bind(#[from] server::BindError),
    /// A bound listener's address could not be read, or moved to its runtime.
    #[error("{what}: {source}")]
    Listener {
        /// Which listener.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The internal listener's runtime could not start.
    #[error("cannot start the internal listener's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The auth keys cannot be used.
    #[error(transparent)]
    Keys(#[from] crate::auth::KeyError),
    /// A socket received from the service manager cannot be used.
    #[error("{what} (socket from the service manager): {source}")]
    Inherited {
        /// Which listener.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
}

/// The socket received for `what`, or a new one bound to `addr`.
async fn listener(
    what: &str,
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
) -> Result<tokio::net::TcpListener, StartError> {
    match inherited {
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l))
            .map_err(|source| StartError::Inherited {
                what: what.to_owned(),
                source,
            }),
        None => Ok(server::bind(what, addr).await?),
    }
}

/// Binds both listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, server::Options::default()).await
}

/// [`start`] with other connection time limits than the defaults (tests shorten them to
/// see hostile clients cut off without waiting the full timeouts).
pub async fn start_with(config: Config, options: server::Options) -> Result<Running, StartError> {
    start_on(config, options, Inherited::default()).await
}

/// [`start_with`] on listening sockets received from the service manager, where given;
/// the others are bound as usual.
pub async fn start_on(
    config: Config,
    options: server::Options,
    inherited: Inherited,
) -> Result<Running, StartError> {
    let proxy_listener = listener("listen", config.listen, inherited.proxy).await?;
    let admin_listener = listener("admin_listen", config.admin_listen, inherited.admin).await?;
    let address = |what: &str| {
        let what = what.to_owned();
        move |source| StartError::Listener { what, source }
    };
    let proxy_addr = proxy_listener.local_addr().map_err(address("listen"))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(address("admin_listen"))?;
    let admin_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ssegate-admin")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    // Re-registered with the runtime that serves it.
    let admin_listener = admin_listener
        .into_std()
        .and_then(|l| {
            let _entered = admin_runtime.enter();
            tokio::net::TcpListener::from_std(l)
        })
        .map_err(address(&format!("admin_listen {admin_addr}")))?;
    let metrics = Arc::new(Metrics::default());
    metrics.tenants().configure(
        config.tenants.topic.as_ref(),
        config.limits.max_connections_per_tenant,
    );
    metrics.set_max_connections(config.limits.max_connections);
    let hub = Hub::start(hub_settings(&config), Arc::clone(&metrics));
    let shutdown = Shutdown::new();
    let grace = config.shutdown.grace;

    let limits = Limits::new(&config.limits);
    let public = Arc::new(Public::new(
        &config,
        hub.clone(),
        Arc::clone(&limits),
        Arc::clone(&metrics),
        shutdown.clone(),
    )?);
    let dashboard = Dashboard::start(hub.clone(), Arc::clone(&metrics), shutdown.clone());
    let admin = Arc::new(Admin::new(
        &config,
        hub.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
        Arc::clone(&dashboard),
    ));
    tokio::spawn(housekeeping(
        Arc::clone(&limits),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let finish = shutdown.clone();
    let public_server = server::serve_with(
        proxy_listener,
        Arc::clone(&public),
        shutdown.clone(),
        grace,
        false,
        options,
    );
    let servers = vec![
        tokio::spawn(async move {
            public_server.await;
            finish.finish();
        }),
        admin_runtime.spawn(server::serve_with(
            admin_listener,
            Arc::clone(&admin),
            shutdown.clone(),
            grace,
            true,
            options,
        )),
    ];
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, upstream = %config.upstream, "listening");
    Ok(Running {
        proxy_addr,
        admin_addr,
        hub,
        public,
        admin,
        limits,
        metrics,
        shutdown,
        grace,
        config: Mutex::new(config),
        servers,
        _admin_runtime: AdminRuntime(Some(admin_runtime)),
    })
}
