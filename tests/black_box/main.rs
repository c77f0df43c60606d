//! The black-box tests: orderlog driven from outside (HTTP, the CLI, the log
//! on a real Kafka broker), one module per area, in one test binary so that
//! RocksDB and librdkafka are linked once instead of once per file.
//!
//! Suites stay apart, as binaries of their own, when they own something
//! process-wide or fault shared machines:
//! - `crash`, `broker_faults`, `cluster`: kill and pause nodes and brokers,
//!   and run long under load;
//! - `erasure`, `privacy`: install the process's tracing subscriber (at trace
//!   and debug level, every crate) and read every log line the process
//!   wrote; in here they would read, and slow, every other test's logs;
//!
//! One test here installs a subscriber too (`api`'s reveal test: `orderlog`
//! at info, as JSON, into memory); the lines it looks for name its own order.
//!
//! Run one module with `cargo test --test black_box api::`.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod audit;
mod bad_input;
mod compose;
mod http_limits;
mod kafka_smoke;
mod model;
mod ops;
mod schema_fixtures;
mod secure_kafka;
mod serve;
mod tls;
mod views;
