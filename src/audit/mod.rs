//! Audit tooling: commands that read the event log directly from Kafka (and,
//! where they must, a node's data directory opened read-only) and change
//! nothing. One file per command; the checking logic in each is pure and
//! unit-tested, the Kafka and RocksDB reads live in [`log`] and in each
//! command's `run`.
//!
//! - [`replay`]: rebuild every view from offset zero into a fresh directory.
//! - [`verify`]: sequence numbers, hash chains, decoding, sealed fields
//!   against the vault, and live views against a replay.
//! - [`history`]: one order's events, personal fields only on request.
//! - [`shares`]: who received which field classes of which order, and when.
//! - [`receipts`]: erasures found in the log, re-verified against the node.
//!
//! Never here: anything that writes to Kafka or to a node's RocksDB, and any
//! personal plaintext in a log line or an error (only `history --reveal`
//! prints personal fields, to stdout).

pub mod history;
pub mod log;
pub mod receipts;
pub mod replay;
pub mod shares;
pub mod verify;

use std::path::Path;
use std::time::Duration;

use rdkafka::error::KafkaError;
use uuid::Uuid;

use crate::crypto::{KekRing, KeyVault, VaultError};
use crate::kafka::KafkaSettings;
use crate::projections::projector::ProjectorError;
use crate::store::{Store, StoreError};

/// Operational errors of the audit commands (findings are not errors: they
/// are the commands' results).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Projector(#[from] ProjectorError),
    #[error(transparent)]
    SubjectIndex(#[from] crate::projections::subjects::IndexError),
    #[error("topic {0} does not exist or has no partitions")]
    NoTopic(String),
    #[error("{0} is not empty: replay needs a fresh directory")]
    NotEmpty(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("reading the log made no progress for {0:?} (is the broker up?)")]
    Stalled(Duration),
    #[error("the projector stopped before it caught up with the log")]
    ProjectorStopped,
    #[error("invalid party {0:?}: expected logistics:<provider> or merchant:<merchant>")]
    BadParty(String),
    #[error(
        "a replay authenticates every record with the log key, which comes from the KEK: set ORDERLOG_KEK or ORDERLOG_KEK_FILE"
    )]
    NoLogKeys,
}

/// Where the log is.
#[derive(Debug, Clone)]
pub struct Source {
    pub settings: KafkaSettings,
    pub topic: String,
    /// The keys that authenticate the log's records. Without them (an
    /// audit without the KEK) records are read unauthenticated, and a
    /// replay refuses to run.
    pub log_keys: Option<std::sync::Arc<crate::crypto::LogKeys>>,
}

/// A node's data directory, opened read-only: its key vault and its views.
#[derive(Debug)]
pub struct NodeData {
    pub vault: KeyVault,
}

impl NodeData {
    pub fn open(data_dir: &Path, ring: KekRing) -> Result<Self, AuditError> {
        let store = Store::open_read_only(data_dir)?;
        Ok(Self {
            vault: KeyVault::new(store, ring),
        })
    }

    pub fn store(&self) -> &Store {
        self.vault.store()
    }

    /// What the vault holds for an order, as the checks need it.
    pub fn key(&self, order_id: Uuid) -> KeyLookup {
        KeyLookup::of(self.vault.get(order_id))
    }
}

pub use crate::crypto::vault::KeyLookup;

/// Milliseconds since the epoch as RFC 3339 (UTC).
pub fn time_text(ms: i64) -> String {
    crate::clock::rfc3339(ms)
}
