//! orderlog: an event-sourced order backend. Orders are append-only streams
//! of encrypted events in Kafka; views live in RocksDB; personal data is
//! erased by destroying the order's key (crypto-shredding).
//!
//! Crate map:
//! - [`domain`]: order state machine (`decide`/`apply`), validation newtypes,
//!   the `Personal<T>` wrapper. Pure: no I/O.
//! - [`events`]: the versioned envelope, codec, upcasting, hash chain. The
//!   only place personal fields are sealed and opened.
//! - [`crypto`]: order keys, per-class subkeys, AES-SIV, KEK, key vault.
//! - [`store`]: RocksDB column families and typed value codecs.
//! - [`kafka`]: client settings, topics, which partition an order goes to,
//!   the embedded mock cluster.
//! - [`projections`]: the projector and the shipping and merchant views.
//! - [`service`]: the write side: per-partition writers with group commit.
//! - [`erasure`]: after an erasure is logged: the purge queue, each node's
//!   progress, the receipt.
//! - [`access`]: roles, bearer tokens and the `Secret` type (a leaf module).
//! - [`api`]: HTTP routes, authentication, error-to-status mapping.
//! - [`config`], [`app`]: layered configuration and the wiring of `serve`.
//! - [`telemetry`]: metric names and the Prometheus recorder.
//! - [`clock`]: wall-clock time as the log and the API write it.
//! - [`cpu`]: the CPU features the build uses, checked at start.
//! - [`shutdown`]: the node's tree of cancellation tokens, its background
//!   threads (`Worker`) and their retry pause.
//! - [`error`]: `Cause`, the error beneath a module's error, kept whole.
//! - [`audit`]: read-only audit commands (replay, verify, history, shares,
//!   erasure receipts).

pub mod access;
pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cpu;
pub mod crypto;
pub mod domain;
pub mod erasure;
pub mod error;
pub mod events;
pub mod kafka;
pub mod projections;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod telemetry;

/// The allocator of every binary that links orderlog (the server, the
/// tests, the benches). glibc's malloc spent about a third of the
/// projector's folding thread in `free` and `malloc_consolidate`, much of it
/// on buffers the decoding threads had allocated.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
