//! Wiring of `orderlog serve`: configuration in, a running HTTP service out.
//! `main` only parses flags and calls [`App::start`]; tests do the same on
//! port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::auth::TokenEntry;
use crate::api::{self, AppState, auth::Tokens};
use crate::config::Config;
use crate::crypto::replica::keys_topic_spec;
use crate::crypto::{KekRing, KeyFollower, KeyReplica, KeyVault, keys_topic_for};
use crate::erasure::{Purger, Tracker};
use crate::kafka::{self, KafkaSettings, TopicSpec, embedded::Embedded};
use crate::projections::{Assignment, Projector, ProjectorConfig};
use crate::service::{ClusterOptions, Service, StateOptions};
use crate::store::Store;

/// A running orderlog.
pub struct App {
    pub addr: SocketAddr,
    /// `http`, or `https` when a certificate is configured.
    pub scheme: &'static str,
    pub service: Service,
    pub kafka: KafkaSettings,
    pub topic: String,
    pub store: Store,
    pub projector: Option<Projector>,
    keys: Option<KeyFollower>,
    purger: Option<Purger>,
    indexer: Option<crate::projections::subjects::Indexer>,
    retention: Option<crate::erasure::retention::Retention>,
    /// The root of the node's tokens (see [`crate::shutdown`]).
    shutdown: CancellationToken,
    /// The HTTP server's: cancelled first, so requests drain while the
    /// parts they use still run.
    http: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    // Kept alive for the app's lifetime; dropped last.
    _data: Option<tempfile::TempDir>,
    embedded: Option<Embedded>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("addr", &self.addr)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// How long shutdown may take: in-flight commands, then the producer flush.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

impl App {
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        // Plain HTTP off loopback only when asked for knowingly.
        config.check_plain_http()?;
        crate::telemetry::register_all();
        // The node's shutdown signal: every part runs under a child of it.
        // Until the start succeeds, leaving early (an error) stops what was
        // started.
        let shutdown = CancellationToken::new();
        let started = shutdown.clone().drop_guard();
        let kek = config.kek.load().context("loading the KEK")?;
        let (embedded, settings, data) = match &config.brokers {
            Some(brokers) => {
                let settings = KafkaSettings {
                    brokers: brokers.clone(),
                    extra: config.kafka.clone(),
                };
                let dlq = format!(
                    "{}{}",
                    config.topic,
                    crate::projections::projector::DEAD_LETTER_SUFFIX
                );
                kafka::ensure_topics(
                    &settings,
                    &[
                        TopicSpec::events(&config.topic, config.partitions, config.replication),
                        TopicSpec::events(dlq, 1, config.replication),
                        keys_topic_spec(
                            &keys_topic_for(&config.topic),
                            config.partitions,
                            config.replication,
                        ),
                        kafka::members_topic_spec(
                            &kafka::members_topic_for(&config.topic),
                            config.replication,
                        ),
                    ],
                )
                .await
                .with_context(|| format!("creating topic {}", config.topic))?;
                (None, settings, None)
            }
            None => {
                let e = Embedded::start().context("starting the embedded Kafka mock cluster")?;
                e.create_topic(&config.topic, config.partitions)
                    .context("creating the topic on the embedded cluster")?;
                e.create_topic(
                    &format!(
                        "{}{}",
                        config.topic,
                        crate::projections::projector::DEAD_LETTER_SUFFIX
                    ),
                    1,
                )
                .context("creating the dead-letter topic on the embedded cluster")?;
                e.create_topic(&keys_topic_for(&config.topic), config.partitions)
                    .context("creating the key topic on the embedded cluster")?;
                e.create_topic(&kafka::members_topic_for(&config.topic), 1)
                    .context("creating the members topic on the embedded cluster")?;
                let settings = KafkaSettings::new(e.bootstrap());
                let dir = tempfile::Builder::new()
                    .prefix("orderlog-embedded-")
                    .tempdir()?;
                (Some(e), settings, Some(dir))
            }
        };
        let data_dir = data
            .as_ref()
            .map(|d| d.path().to_owned())
            .unwrap_or_else(|| config.data_dir.clone());
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let store = Store::open_with(
            &data_dir,
            crate::store::StoreTuning {
                block_cache_bytes: config.block_cache_mb << 20,
                ..Default::default()
            },
        )?;
        let vault = Arc::new(KeyVault::new(store.clone(), KekRing::new(kek.clone())));
        if config.accept_v1_events {
            tracing::warn!(
                "Schema-v1 events (no log MAC) are accepted as authentic (--accept-v1-events): anyone able to produce to the topic can write one."
            );
            vault.accept_v1_events(true);
        }
        let keys_topic = keys_topic_for(&config.topic);
        // Purges what the key follower and the projector destroy (and what a
        // crash left queued) off the disk.
        let purger =
            Purger::start(store.clone(), shutdown.child_token()).context("starting the purger")?;
        // The vault follows the key topic for as long as the node runs; a
        // node whose vault is empty restores it this way first.
        let was_empty = vault.is_empty()?;
        let (follower, report) = {
            let (s, t, v, st, pg, stop) = (
                settings.clone(),
                keys_topic.clone(),
                vault.clone(),
                store.clone(),
                purger.status.clone(),
                shutdown.child_token(),
            );
            tokio::task::spawn_blocking(move || {
                KeyFollower::start(&s, &t, v, st, pg, Duration::from_secs(120), stop)
            })
            .await?
            .context("reading the key topic")?
        };
        // The keys that authenticate the log, retired ones included (the
        // follower has stored those it read).
        let log_keys = vault.log_keys_handle();
        let restored = was_empty && report.restored + report.shredded > 0;
        if restored {
            tracing::warn!(restored = report.restored, shredded = report.shredded, topic = %keys_topic, "Empty key vault restored from the key topic.");
        }
        let key_replica = KeyReplica::new(
            &settings,
            &keys_topic,
            crate::service::delivery_timeout(config.produce_timeout),
        )?;
        let partitions = {
            let (s, t) = (settings.clone(), config.topic.clone());
            tokio::task::spawn_blocking(move || {
                kafka::partition_count(&s, &t, Duration::from_secs(10))
            })
            .await?
            .with_context(|| format!("reading metadata of topic {}", config.topic))?
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let cluster = ClusterOptions {
            node_id: match &config.node_id {
                Some(id) => id.clone(),
                None => node_id(&data_dir)?,
            },
            advertise_url: config
                .advertise_url
                .clone()
                .unwrap_or_else(|| advertised(scheme, addr)),
            session_timeout: config.writer_session_timeout,
            heartbeat: Duration::from_secs(1),
        };
        // The writers first: the data directory
        // prepared for the order state (before the projector folds into it),
        // then their catch-up in the background.
        let service = Service::start(
            settings.clone(),
            config.topic.clone(),
            partitions,
            vault,
            Some(key_replica),
            Some(follower.status.clone()),
            config.produce_timeout,
            StateOptions {
                store: store.clone(),
                cache_orders: config.state_cache_orders,
                idempotency_ttl: config.idempotency_ttl,
                rebuild: restored,
            },
            cluster.clone(),
            shutdown.child_token(),
        )
        .await
        .context("starting the write service")?;
        // The subject index, rebuilt first if the KEK changed: the projector
        // queues its work.
        let subjects = {
            let (st, v) = (store.clone(), service.vault().clone());
            match tokio::task::spawn_blocking(move || {
                crate::projections::subjects::SubjectIndex::open(st, v)
            })
            .await?
            {
                Ok(s) => s,
                Err(e) => {
                    service.shutdown(SHUTDOWN_LIMIT).await;
                    return Err(e).context("opening the subject index");
                }
            }
        };
        // Then the projector: it folds the order state with the views, and a
        // writer with a long tail to catch up waits for it (in the
        // background) rather than reading the log a second time.
        let projector = match Projector::start(
            store.clone(),
            ProjectorConfig {
                settings: settings.clone(),
                topic: config.topic.clone(),
                // Every partition, from the offsets stored beside the views:
                // the order state commands are decided against is kept on
                // every node for every partition, so a node that takes a
                // partition over reads only its tail.
                assignment: Assignment::All,
                batch_max: 4096,
                max_rate: 0,
                dead_letter: true,
                idempotency_ttl: config.idempotency_ttl,
                purge: Some(purger.status.clone()),
                log_keys,
            },
            shutdown.child_token(),
        ) {
            Ok(p) => p,
            Err(e) => {
                service.shutdown(SHUTDOWN_LIMIT).await;
                return Err(e).context("starting the projector");
            }
        };
        let indexer = crate::projections::subjects::Indexer::start(
            subjects.clone(),
            projector.status.clone(),
            shutdown.child_token(),
        );
        service.set_tracker(Tracker {
            keys: follower.status.clone(),
            views: projector.status.clone(),
            purge: purger.status.clone(),
        });
        let retention = crate::erasure::retention::Retention::start(
            service.clone(),
            config.retention,
            shutdown.child_token(),
        );
        let tokens = Tokens::new(&config.tokens);
        if tokens.is_empty() {
            tracing::warn!(
                "No bearer tokens configured: every request will be refused (set ORDERLOG_TOKENS)."
            );
        }
        let state = AppState {
            service: service.clone(),
            tokens: Arc::new(tokens),
            topic: config.topic.as_str().into(),
            store: store.clone(),
            projector: Some(projector.status.clone()),
            forwarder: Arc::new(api::forward::Forwarder::new(
                *kek.derive_secret("node-auth"),
                config.tls.as_ref().map(|(cert, _)| cert.as_path()),
                config.produce_timeout,
            )?),
            erasure_wait: config.erasure_wait,
            subjects: Some(subjects),
        };
        let http = shutdown.child_token();
        let token = http.clone();
        let router = api::router(state);
        let limits = config.http;
        let server = match &config.tls {
            None => tokio::spawn(api::server::serve(listener, router, limits, token)),
            Some((cert, key)) => {
                let tls = api::tls::server_config(cert, key)?;
                let listener = api::tls::TlsListener::new(listener, tls, limits.max_connections)?;
                tokio::spawn(api::server::serve(listener, router, limits, token))
            }
        };
        tracing::info!(%addr, scheme, node_id = %cluster.node_id, url = %cluster.advertise_url, topic = %config.topic, partitions, embedded = embedded.is_some(), "orderlog serving.");
        started.disarm();
        Ok(Self {
            addr,
            scheme,
            service,
            kafka: settings,
            topic: config.topic.clone(),
            store,
            projector: Some(projector),
            keys: Some(follower),
            purger: Some(purger),
            indexer: Some(indexer),
            retention: Some(retention),
            shutdown,
            http,
            server,
            _data: data,
            embedded,
        })
    }

    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Stops accepting, finishes in-flight requests and commands, flushes the
    /// producer, then stops the readers; each step bounded by
    /// [`SHUTDOWN_LIMIT`]. The parts are cancelled one by one, each after
    /// the ones that use it; the root token last, for anything left.
    pub async fn stop(mut self) {
        self.http.cancel();
        if tokio::time::timeout(SHUTDOWN_LIMIT, &mut self.server)
            .await
            .is_err()
        {
            tracing::warn!("HTTP server did not drain in time; its connections are dropped.");
            self.server.abort();
        }
        if let Some(r) = self.retention.take() {
            match tokio::time::timeout(SHUTDOWN_LIMIT, r.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(part = "retention", error = %e, "Stopping failed."),
                Err(_) => tracing::error!(part = "retention", "Did not stop in time."),
            }
        }
        self.service.shutdown(SHUTDOWN_LIMIT).await;
        if let Some(p) = self.projector.take() {
            stop_within("projector", move || p.stop().map_err(|e| e.to_string())).await;
        }
        if let Some(i) = self.indexer.take() {
            stop_within("subject indexer", move || i.stop()).await;
        }
        if let Some(k) = self.keys.take() {
            stop_within("key follower", move || k.stop().map_err(|e| e.to_string())).await;
        }
        if let Some(p) = self.purger.take() {
            stop_within("purger", move || p.stop().map_err(|e| e.to_string())).await;
        }
        self.shutdown.cancel();
        tracing::info!("orderlog stopped.");
    }
}

impl Drop for App {
    /// An app dropped without [`App::stop`] still ends every part's work
    /// (without waiting for it).
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Runs a background part's blocking stop, for at most [`SHUTDOWN_LIMIT`]:
/// an error, a panic or a stop that does not end in time is logged (the
/// part's thread is then left to the process's exit).
async fn stop_within(
    part: &'static str,
    stop: impl FnOnce() -> Result<(), String> + Send + 'static,
) {
    match tokio::time::timeout(SHUTDOWN_LIMIT, tokio::task::spawn_blocking(stop)).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(part, %error, "Stopping failed."),
        Ok(Err(panic)) => tracing::error!(part, error = %panic, "Stopping panicked."),
        Err(_) => tracing::error!(
            part,
            limit_s = SHUTDOWN_LIMIT.as_secs(),
            "Did not stop in time; left running until the process exits."
        ),
    }
}

/// One token per role for the embedded demo, with the roles printed.
pub fn demo_tokens() -> Vec<TokenEntry> {
    api::auth::demo_tokens()
}

/// The node id kept in the data directory (`node-id`), generated on first use.
fn node_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::write(&path, &id)
                .with_context(|| format!("writing the node id to {}", path.display()))?;
            Ok(id)
        }
    }
}

/// The URL other nodes reach this one at, from the bound address (an
/// unspecified address is advertised as the loopback one).
fn advertised(scheme: &str, addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        addr.ip()
    };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}
