//! ssegate: a reverse-proxy sidecar that adds Server-Sent Events fan-out to an existing
//! web app without changing how the app serves its pages.
//!
//! ```text
//!  browsers ──► public listener (proxy)
//!                ├─ GET /events…  → hub subscription → SSE stream
//!                ├─ /_ssegate/…   → ssegate's own
//!                └─ anything else → forwarded to the app (hyper client, pooled)
//!  the app  ──► internal listener (admin)
//!                POST /publish → publish (validate) → hub log → dispatchers → subscriber queues
//!  instances ◄─► broker: memory (the hub log itself) | disk (the same, also written to a
//!                directory) | redis (one stream; each instance's reader mirrors it into
//!                its hub log)
//! ```
//!
//! Dependencies point one way: [`sse`], [`chunked`] and [`config`] use nothing of ours; [`hub`] uses
//! `sse`; [`proxy`], [`publish`] and [`admin`] use the hub; only [`app`] wires everything.
#![forbid(unsafe_code)]

pub mod activation;
pub mod admin;
pub mod app;
pub mod auth;
pub mod chunked;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod derive;
pub mod head;
pub mod hub;
pub mod limits;
pub mod logbound;
pub mod metrics;
pub mod proxy;
pub mod publish;
pub mod refusal;
pub mod response;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod tenants;
pub mod watch;
