//! The `orderlog` binary: parses the command line, sets up telemetry, and hands
//! over to the library. Nothing testable lives here.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orderlog::app::{App, demo_tokens};
use orderlog::audit;
use orderlog::config::{Config, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "orderlog",
    version,
    about = "Event-sourced order backend with crypto-shredding"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the HTTP API. Without --brokers it runs on an embedded, in-memory Kafka (demo only).
    Serve(Overrides),
    /// Run only the projector: keep the views in DATA_DIR up to date with the log.
    Project(ProjectArgs),
    /// Print the digest of the views in a data directory.
    ViewDigest {
        #[arg(long, env = "ORDERLOG_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Key management: `keys rotate` re-wraps every order key under a new KEK.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Audit: rebuild every view from offset zero into a fresh directory and print the digests.
    Replay(ReplayArgs),
    /// Audit: check sequences, hash chains, decoding, sealed fields against the vault, and the
    /// node's views against a replay. Exits 1 on any finding.
    Verify(VerifyArgs),
    /// Audit: one order's events with their public fields (personal fields only with --reveal).
    History(HistoryArgs),
    /// Audit: who received which field classes of which order, and when.
    Shares(SharesArgs),
    /// Audit: the erasures in the log, each re-verified against the node. Exits 1 on any failure.
    Receipts(ReceiptsArgs),
    /// Write a new key-encryption key (KEK) to a file readable by its owner only.
    Keygen {
        /// Where to write it; refuses to overwrite an existing file.
        #[arg(long, default_value = "orderlog.kek")]
        out: PathBuf,
    },
    /// Make a private CA and a server certificate for the given hosts (for a
    /// deployment with no certificates of its own: compose, a local secure
    /// broker). Writes ca.pem, server.pem, server.key and server-keystore.pem
    /// (Kafka's PEM keystore); keeps a directory that already holds a set.
    TlsCerts {
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// A DNS name or IP address the certificate is for (repeat it).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Re-wrap every live order key under a new KEK, in the vault (DATA_DIR)
    /// and in the key replica topic, without touching the event log. Run it
    /// with `serve` stopped; then give `serve` the new KEK and destroy the old.
    Rotate {
        #[command(flatten)]
        config: Overrides,
        /// File with the new KEK (`orderlog keygen --out ...`).
        #[arg(long)]
        new_kek_file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ProjectArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "ORDERLOG_BROKERS")]
    brokers: String,
    #[arg(long, env = "ORDERLOG_TOPIC", default_value = orderlog::kafka::TOPIC_EVENTS)]
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

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    config: Overrides,
    /// Fresh directory to build the views in (created if missing; refused if not empty).
    #[arg(long)]
    into: PathBuf,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Brokers, topic, the node's --data-dir (opened read-only) and its KEK, as for `serve`.
    #[command(flatten)]
    config: Overrides,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Skip the comparison of the node's views with a replay.
    #[arg(long)]
    skip_views: bool,
}

#[derive(Debug, clap::Args)]
struct HistoryArgs {
    #[command(flatten)]
    config: Overrides,
    /// The order id (UUID).
    order_id: String,
    /// Open the personal fields with the node's vault (--data-dir, KEK). The access is logged.
    #[arg(long)]
    reveal: bool,
    /// Who is revealing, for the access log (default: $USER).
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct SharesArgs {
    #[command(flatten)]
    config: Overrides,
    /// Only this order.
    #[arg(long)]
    order: Option<String>,
    /// Only this party: logistics:<provider> or merchant:<merchant>.
    #[arg(long)]
    party: Option<String>,
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    #[arg(long)]
    csv: bool,
}

#[derive(Debug, clap::Args)]
struct ReceiptsArgs {
    /// Brokers, topic, the node's --data-dir (opened read-only) and its KEK.
    #[command(flatten)]
    config: Overrides,
    #[arg(long)]
    json: bool,
}

fn init_telemetry() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDERLOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_telemetry();
    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Cmd::Keygen { out } => ok(keygen(out)),
        Cmd::TlsCerts { out, hosts } => ok(tls_certs(out, hosts)),
        Cmd::Serve(overrides) => ok(serve(overrides)),
        Cmd::Project(args) => ok(project(args)),
        Cmd::ViewDigest { data_dir } => ok(view_digest(data_dir)),
        Cmd::Keys {
            command:
                KeysCmd::Rotate {
                    config,
                    new_kek_file,
                },
        } => ok(rotate(config, new_kek_file)),
        Cmd::Replay(args) => ok(audit_replay(args)),
        Cmd::Verify(args) => audit_verify(args),
        Cmd::History(args) => ok(audit_history(args)),
        Cmd::Shares(args) => ok(audit_shares(args)),
        Cmd::Receipts(args) => audit_receipts(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn orderlog_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("ORDERLOG_"))
        .collect()
}

/// The configuration of an audit command and where its log is. Audits read
/// a real cluster: the embedded mock would be empty.
fn audit_source(o: &Overrides, needs_kek: bool) -> anyhow::Result<(Config, audit::Source)> {
    let env = orderlog_env();
    let config = if needs_kek {
        Config::resolve(o, &env)?
    } else {
        Config::resolve_without_kek(o, &env)?
    };
    let brokers = config.brokers.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "audit commands read a real Kafka cluster: give --brokers or ORDERLOG_BROKERS"
        )
    })?;
    let source = audit::Source {
        settings: orderlog::kafka::KafkaSettings {
            brokers,
            extra: config.kafka.clone(),
        },
        topic: config.topic.clone(),
        log_keys: audit_log_keys(&config)?,
    };
    Ok((config, source))
}

/// The keys that authenticate the log: the KEK's, and the retired ones the
/// node's data directory holds (after a KEK rotation). None without a KEK.
fn audit_log_keys(
    config: &Config,
) -> anyhow::Result<Option<std::sync::Arc<orderlog::crypto::LogKeys>>> {
    if matches!(config.kek, orderlog::config::KekSource::Ephemeral) {
        eprintln!(
            "warning: no KEK configured: records are read without checking that orderlog wrote them (a forged record would count); set ORDERLOG_KEK or ORDERLOG_KEK_FILE"
        );
        return Ok(None);
    }
    let keys = if config.data_dir.join("CURRENT").exists() {
        (*open_node(config)?.vault.log_keys()).clone()
    } else {
        orderlog::crypto::LogKeys::from_ring(&orderlog::crypto::KekRing::new(config.kek.load()?))
    };
    Ok(Some(std::sync::Arc::new(
        keys.accepting_v1(config.accept_v1_events),
    )))
}

fn open_node(config: &Config) -> anyhow::Result<audit::NodeData> {
    let kek = config.kek.load()?;
    let node = audit::NodeData::open(&config.data_dir, orderlog::crypto::KekRing::new(kek))?;
    node.vault.accept_v1_events(config.accept_v1_events);
    Ok(node)
}

fn findings_exit(clean: bool) -> ExitCode {
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn audit_replay(args: ReplayArgs) -> anyhow::Result<()> {
    let (_, source) = audit_source(&args.config, false)?;
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    let report = audit::replay::run(&source, &args.into, audit::log::STALL_LIMIT, |p| {
        if terminal {
            eprint!("\r\x1b[2K{}", p.line(30));
        } else if last_line.elapsed() >= std::time::Duration::from_secs(2) || p.done >= p.total {
            last_line = std::time::Instant::now();
            eprintln!("replay: {}", p.line(20));
        }
    })?;
    if terminal {
        eprintln!();
    }
    print!("{}", report.to_text());
    Ok(())
}

fn audit_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (config, source) = audit_source(&args.config, true)?;
    let node = open_node(&config)?;
    let options = audit::verify::VerifyOptions {
        views: !args.skip_views,
        ..Default::default()
    };
    let report = audit::verify::run(&source, &node, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(findings_exit(report.is_clean()))
}

fn audit_history(args: HistoryArgs) -> anyhow::Result<()> {
    let order_id = uuid::Uuid::parse_str(&args.order_id)
        .map_err(|_| anyhow::anyhow!("{:?} is not an order id (a UUID)", args.order_id))?;
    let (config, source) = audit_source(&args.config, args.reveal)?;
    let node = if args.reveal {
        Some(open_node(&config)?)
    } else {
        None
    };
    let actor = args
        .actor
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    let history = audit::history::run(
        &source,
        order_id,
        node.as_ref().map(|n| (n, actor.as_str())),
    )?;
    anyhow::ensure!(
        !history.events.is_empty() || !history.findings.is_empty(),
        "order {order_id} has no events in {}",
        source.topic
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&history)?);
    } else {
        print!("{}", history.to_text());
    }
    Ok(())
}

fn audit_shares(args: SharesArgs) -> anyhow::Result<()> {
    let order = args
        .order
        .as_deref()
        .map(|o| {
            uuid::Uuid::parse_str(o)
                .map_err(|_| anyhow::anyhow!("{o:?} is not an order id (a UUID)"))
        })
        .transpose()?;
    let party = args.party.as_deref().map(str::parse).transpose()?;
    let (_, source) = audit_source(&args.config, false)?;
    let shares = audit::shares::run(&source, audit::shares::SharesQuery { order, party })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&shares)?);
    } else if args.csv {
        print!("{}", audit::shares::to_csv(&shares));
    } else {
        print!("{}", audit::shares::to_table(&shares));
    }
    Ok(())
}

fn audit_receipts(args: ReceiptsArgs) -> anyhow::Result<ExitCode> {
    let (config, source) = audit_source(&args.config, true)?;
    let node = open_node(&config)?;
    let receipts = audit::receipts::run(&source, &node)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&receipts)?);
    } else {
        print!("{}", audit::receipts::to_text(&receipts));
    }
    Ok(findings_exit(receipts.iter().all(|r| r.ok())))
}

fn kafka_settings(brokers: String) -> orderlog::kafka::KafkaSettings {
    let mut s = orderlog::kafka::KafkaSettings::new(brokers);
    for (k, v) in std::env::vars() {
        if let Some(rest) = k.strip_prefix("ORDERLOG_KAFKA_") {
            s.extra
                .insert(rest.to_ascii_lowercase().replace('_', "."), v);
        }
    }
    s
}

fn project(args: ProjectArgs) -> anyhow::Result<()> {
    use orderlog::projections::{Assignment, Projector, ProjectorConfig};
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
    let store = orderlog::store::Store::open(&args.data_dir)?;
    let vault = orderlog::crypto::KeyVault::new(
        store.clone(),
        orderlog::crypto::KekRing::new(config.kek.load()?),
    );
    vault.accept_v1_events(config.accept_v1_events);
    // Log keys retired by a KEK rotation, which a node's key follower would
    // have stored: without them the records before it would not authenticate.
    let settings = kafka_settings(args.brokers.clone());
    let keys_topic = orderlog::crypto::keys_topic_for(&args.topic);
    let retired = orderlog::crypto::follow::load_retired_log_keys(&settings, &keys_topic, &vault)?;
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
        idempotency_ttl: orderlog::service::state::DEFAULT_IDEMPOTENCY_TTL,
        purge: None,
        log_keys,
    };
    // Erased orders' old rows are purged from disk as they are met.
    let purger = orderlog::erasure::Purger::start(store.clone())?;
    let config = ProjectorConfig {
        purge: Some(purger.status.clone()),
        ..config
    };
    let projector = Projector::start(store, config)?;
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
            _ = wait_for_signal() => tracing::info!("Stop requested."),
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
    purger.stop();
    println!(
        "projected {projected} events ({dead} dead-lettered) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn rotate(overrides: Overrides, new_kek_file: PathBuf) -> anyhow::Result<()> {
    use orderlog::crypto::{KekRing, KeyReplica, KeyVault, keys_topic_for};
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("ORDERLOG_"))
        .collect();
    let config = Config::resolve(&overrides, &env)?;
    let old = config.kek.load()?;
    let new = orderlog::crypto::Kek::load_file(&new_kek_file)?;
    anyhow::ensure!(old.id() != new.id(), "the new KEK is the one in use");
    let store = orderlog::store::Store::open(&config.data_dir)?;
    let vault = KeyVault::new(store, KekRing::new(old.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let (replica, retire_until) = match &config.brokers {
            Some(b) => {
                let settings = orderlog::kafka::KafkaSettings {
                    brokers: b.clone(),
                    extra: config.kafka.clone(),
                };
                // The log's end now (serve is stopped): the old KEK's log key
                // authenticates the records before it only.
                let source = audit::Source {
                    settings: settings.clone(),
                    topic: config.topic.clone(),
                    log_keys: None,
                };
                let partitions: Vec<i32> =
                    (0..audit::log::partition_count(&source)? as i32).collect();
                let ends = audit::log::watermarks(&source, &partitions)?
                    .into_iter()
                    .map(|(p, (_, high))| (p, high))
                    .collect();
                let replica = KeyReplica::new(
                    &settings,
                    &keys_topic_for(&config.topic),
                    config.produce_timeout,
                )?;
                (Some(replica), ends)
            }
            None => (None, BTreeMap::new()),
        };
        anyhow::Ok(
            orderlog::crypto::replica::rotate_kek(
                &vault,
                replica.as_ref(),
                new.clone(),
                &retire_until,
            )
            .await?,
        )
    })?;
    println!(
        "rotated KEK {} -> {}: {} keys re-wrapped ({} already under the new KEK), {} republished to {}",
        old.id(),
        new.id(),
        report.rewrapped,
        report.already_current,
        report.republished,
        keys_topic_for(&config.topic)
    );
    println!(
        "Start serve with the new KEK, then destroy the old one: copies wrapped under it become unreadable."
    );
    Ok(())
}

fn view_digest(data_dir: PathBuf) -> anyhow::Result<()> {
    let store = orderlog::store::Store::open(&data_dir)?;
    let d = orderlog::projections::query::digest(&store)?;
    for (view, (rows, digest)) in &d.per_view {
        println!("{view:<16} {rows:>9} rows  {digest}");
    }
    println!("{:<16} {:>9}       {}", "total", "", d.total);
    Ok(())
}

fn keygen(out: PathBuf) -> anyhow::Result<()> {
    let kek = orderlog::crypto::Kek::generate();
    kek.write_new_file(&out)?;
    println!("wrote KEK {} to {} (mode 0600)", kek.id(), out.display());
    Ok(())
}

fn tls_certs(out: PathBuf, hosts: Vec<String>) -> anyhow::Result<()> {
    use orderlog::api::tls::{CertsWritten, write_test_ca};
    match write_test_ca(&out, &hosts)? {
        CertsWritten::Written => println!(
            "wrote a new CA and a certificate for {} to {}",
            hosts.join(", "),
            out.display()
        ),
        CertsWritten::Kept => println!(
            "{} already holds a certificate set; nothing changed",
            out.display()
        ),
    }
    Ok(())
}

fn serve(overrides: Overrides) -> anyhow::Result<()> {
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("ORDERLOG_"))
        .collect();
    let mut config = Config::resolve(&overrides, &env)?;
    // Before anything is started or printed (App::start checks it again).
    config.check_plain_http()?;
    if config.brokers.is_none() {
        eprintln!(
            "orderlog: no brokers configured, running on the EMBEDDED Kafka mock cluster.\n\
             \x20 Demo only: nothing is kept across restarts (events, keys and views live in memory\n\
             \x20 and a temporary directory), and the mock keeps only about 5 MiB per partition,\n\
             \x20 silently dropping older records. Use --brokers host:port for real work."
        );
        if config.tokens.is_empty() {
            config.tokens = demo_tokens();
            println!("Demo bearer tokens (one per role):");
            for (token, role, _) in &config.tokens {
                println!("  {:<22} {}", role.to_string(), token.expose());
            }
        }
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let app = App::start(&config).await?;
        println!("orderlog listening on {}://{}", app.scheme, app.addr);
        wait_for_signal().await;
        tracing::info!("Shutdown requested.");
        app.stop().await;
        Ok(())
    });
    // Blocking work (a log scan) still running after the stop is bounded.
    runtime.shutdown_timeout(orderlog::app::SHUTDOWN_LIMIT);
    result
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
