//! The embedded default broker: librdkafka's mock cluster, in process.
//!
//! For demos only. It keeps nothing across restarts, holds only about 5 MiB
//! per partition (older records are dropped silently), and does not filter
//! aborted transactions. `orderlog serve` says so when it starts in this mode.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A running mock cluster; dropping it stops it.
pub struct Embedded {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("bootstrap", &self.bootstrap())
            .finish()
    }
}

impl Embedded {
    pub fn start() -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            cluster: MockCluster::new(1)?,
        })
    }

    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
    ) -> Result<(), rdkafka::error::KafkaError> {
        self.cluster.create_topic(name, partitions, 1)
    }
}
