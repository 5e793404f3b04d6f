//! Integration tests: real sockets on 127.0.0.1 port 0, ssegate started in-process (or
//! the real binary, in `cli`), upstream apps built in the test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

mod access;
mod cli;
mod deploy;
mod faults;
mod grafana;
mod hostile;
mod ops;
mod proxy;
mod publish;
mod redis;
mod relay;
mod stream;
mod tenants;
