//! Integration tests: real sockets on 127.0.0.1 port 0, ssegate started in-process (or
//! the real binary, in `cli`), upstream apps built in the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod support;

mod access;
mod cli;
mod deploy;
mod derive;
mod disk;
mod dispatch;
mod faults;
mod grafana;
mod heads;
mod hostile;
mod ops;
mod overload;
mod proxy;
mod publish;
mod readme;
mod redis;
mod relay;
mod stream;
mod tenants;
mod watch;
