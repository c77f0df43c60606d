//! The audit commands: `replay`, `verify`, `history`, `shares`, `receipts`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, Overrides, orderlog_env};

use crate::audit;

#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    config: Overrides,
    /// Fresh directory to build the views in (created if missing; refused if not empty).
    #[arg(long)]
    into: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
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
pub(crate) struct HistoryArgs {
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
pub(crate) struct SharesArgs {
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
pub(crate) struct ReceiptsArgs {
    /// Brokers, topic, the node's --data-dir (opened read-only) and its KEK.
    #[command(flatten)]
    config: Overrides,
    #[arg(long)]
    json: bool,
}

/// The configuration of an audit command and where its log is. Audits read
/// a real cluster: the embedded mock would be empty.
pub(crate) fn audit_source(
    o: &Overrides,
    needs_kek: bool,
) -> anyhow::Result<(Config, audit::Source)> {
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
        settings: crate::kafka::KafkaSettings {
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
pub(crate) fn audit_log_keys(
    config: &Config,
) -> anyhow::Result<Option<std::sync::Arc<crate::crypto::LogKeys>>> {
    if matches!(config.kek, crate::config::KekSource::Ephemeral) {
        eprintln!(
            "warning: no KEK configured: records are read without checking that orderlog wrote them (a forged record would count); set ORDERLOG_KEK or ORDERLOG_KEK_FILE"
        );
        return Ok(None);
    }
    let keys = if config.data_dir.join("CURRENT").exists() {
        (*open_node(config)?.vault.log_keys()).clone()
    } else {
        crate::crypto::LogKeys::from_ring(&crate::crypto::KekRing::new(config.kek.load()?))
    };
    Ok(Some(std::sync::Arc::new(
        keys.accepting_v1(config.accept_v1_events),
    )))
}

pub(crate) fn open_node(config: &Config) -> anyhow::Result<audit::NodeData> {
    let kek = config.kek.load()?;
    let node = audit::NodeData::open(&config.data_dir, crate::crypto::KekRing::new(kek))?;
    node.vault.accept_v1_events(config.accept_v1_events);
    Ok(node)
}

pub(crate) fn audit_replay(args: ReplayArgs) -> anyhow::Result<()> {
    let (_, source) = audit_source(&args.config, false)?;
    // A progress bar on a terminal; otherwise a line every two seconds.
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "[{bar:30}] {pos}/{len} events {percent:>3}% {per_sec} ETA {eta}",
            )
            .expect("a valid progress template")
            .progress_chars("#>."),
        );
        bar
    });
    let mut last_line = std::time::Instant::now();
    let report = audit::replay::run(&source, &args.into, audit::log::STALL_LIMIT, |p| {
        if let Some(bar) = &bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
        } else if last_line.elapsed() >= std::time::Duration::from_secs(2) || p.done >= p.total {
            last_line = std::time::Instant::now();
            eprintln!("replay: {}", p.line(20));
        }
    })?;
    if let Some(bar) = bar {
        bar.finish();
    }
    print!("{}", report.to_text());
    Ok(())
}

pub(crate) fn audit_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
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
    Ok(super::findings_exit(report.is_clean()))
}

pub(crate) fn audit_history(args: HistoryArgs) -> anyhow::Result<()> {
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

pub(crate) fn audit_shares(args: SharesArgs) -> anyhow::Result<()> {
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

pub(crate) fn audit_receipts(args: ReceiptsArgs) -> anyhow::Result<ExitCode> {
    let (config, source) = audit_source(&args.config, true)?;
    let node = open_node(&config)?;
    let receipts = audit::receipts::run(&source, &node)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&receipts)?);
    } else {
        print!("{}", audit::receipts::to_text(&receipts));
    }
    Ok(super::findings_exit(receipts.iter().all(|r| r.ok())))
}
