//! `project` (the projector alone) and `view-digest`.

use std::path::PathBuf;

use crate::config::{Config, Overrides, orderlog_env};

#[derive(Debug, clap::Args)]
pub(crate) struct ProjectArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "ORDERLOG_BROKERS")]
    brokers: String,
    #[arg(long, env = "ORDERLOG_TOPIC", default_value = crate::kafka::TOPIC_EVENTS)]
    topic: String,
    /// RocksDB directory of the views.
    #[arg(long, env = "ORDERLOG_DATA_DIR")]
    data_dir: PathBuf,
    /// Consumer group to share partitions in (default orderlog-projector.<topic>).
    #[arg(long)]
    group: Option<String>,
    /// Read every partition without a consumer group (a rebuild).
    #[arg(long, conflicts_with = "group")]
    all_partitions: bool,
    /// Exit once every partition is projected to its end.
    #[arg(long)]
    until_caught_up: bool,
    /// Most events per RocksDB write batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Most events projected per second (0 = unlimited), to spare a busy cluster during a rebuild.
    #[arg(long, default_value_t = 0)]
    max_rate: u32,
    /// The key-encryption key's file (or ORDERLOG_KEK inline): its log key
    /// tells the records orderlog wrote from forgeries.
    #[arg(long, env = "ORDERLOG_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// Take schema-v1 events (no log MAC) as authentic: for a log written before v2 only.
    #[arg(
        long,
        env = "ORDERLOG_ACCEPT_V1_EVENTS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    accept_v1_events: bool,
}

pub(crate) fn kafka_settings(brokers: String) -> crate::kafka::KafkaSettings {
    let mut s = crate::kafka::KafkaSettings::new(brokers);
    s.extra.add_env(&orderlog_env());
    s
}

pub(crate) fn project(args: ProjectArgs) -> anyhow::Result<()> {
    use crate::projections::{Assignment, Projector, ProjectorConfig};
    // The KEK (ORDERLOG_KEK or ORDERLOG_KEK_FILE), for the log key that
    // tells records written by orderlog from forgeries.
    let config = Config::resolve(
        &Overrides {
            brokers: Some(args.brokers.clone()),
            kek_file: args.kek_file.clone(),
            accept_v1_events: args.accept_v1_events,
            ..Overrides::default()
        },
        &orderlog_env(),
    )?;
    std::fs::create_dir_all(&args.data_dir)?;
    let store = crate::store::Store::open(&args.data_dir)?;
    let vault = crate::crypto::KeyVault::new(
        store.clone(),
        crate::crypto::KekRing::new(config.kek.load()?),
    );
    vault.accept_v1_events(config.accept_v1_events);
    // Log keys retired by a KEK rotation, which a node's key follower would
    // have stored: without them the records before it would not authenticate.
    let settings = kafka_settings(args.brokers.clone());
    let keys_topic = crate::crypto::keys_topic_for(&args.topic);
    let retired = crate::crypto::follow::load_retired_log_keys(&settings, &keys_topic, &vault)?;
    if retired > 0 {
        tracing::info!(retired, topic = %keys_topic, "Retired log keys read from the key topic.");
    }
    let log_keys = vault.log_keys_handle();
    let assignment = if args.all_partitions {
        Assignment::All
    } else {
        Assignment::Group(
            args.group
                .unwrap_or_else(|| format!("orderlog-projector.{}", args.topic)),
        )
    };
    let config = ProjectorConfig {
        settings,
        topic: args.topic,
        assignment,
        batch_max: args.batch.max(1),
        max_rate: args.max_rate,
        dead_letter: true,
        idempotency_ttl: crate::service::state::DEFAULT_IDEMPOTENCY_TTL,
        purge: None,
        log_keys,
    };
    // Erased orders' old rows are purged from disk as they are met.
    let stop = crate::shutdown::CancellationToken::new();
    let purger = crate::erasure::Purger::start(store.clone(), stop.child_token())?;
    let config = ProjectorConfig {
        purge: Some(purger.status.clone()),
        ..config
    };
    let projector = Projector::start(store, config, stop.child_token())?;
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let caught_up = async {
            loop {
                if args.until_caught_up && projector.status.caught_up() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = caught_up => {}
            _ = super::serve::wait_for_signal() => tracing::info!("Stop requested."),
        }
    });
    let projected = projector
        .status
        .projected
        .load(std::sync::atomic::Ordering::Relaxed);
    let dead = projector
        .status
        .dead_lettered
        .load(std::sync::atomic::Ordering::Relaxed);
    projector.stop()?;
    purger.stop()?;
    println!(
        "projected {projected} events ({dead} dead-lettered) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(crate) fn view_digest(data_dir: PathBuf) -> anyhow::Result<()> {
    let store = crate::store::Store::open(&data_dir)?;
    let d = crate::projections::query::digest(&store)?;
    for (view, (rows, digest)) in &d.per_view {
        println!("{view:<16} {rows:>9} rows  {digest}");
    }
    println!("{:<16} {:>9}       {}", "total", "", d.total);
    Ok(())
}
