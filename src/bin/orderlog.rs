//! The `orderlog` binary: parses the command line, sets up telemetry, and hands
//! over to the library. Nothing testable lives here.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orderlog::app::{demo_tokens, App};
use orderlog::config::{Config, Overrides};

#[derive(Debug, Parser)]
#[command(name = "orderlog", version, about = "Event-sourced order backend with crypto-shredding")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the HTTP API. Without --brokers it runs on an embedded, in-memory Kafka (demo only).
    Serve(Overrides),
    /// Write a new key-encryption key (KEK) to a file readable by its owner only.
    Keygen {
        /// Where to write it; refuses to overwrite an existing file.
        #[arg(long, default_value = "orderlog.kek")]
        out: PathBuf,
    },
}

fn init_telemetry() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDERLOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_telemetry();
    let result = match cli.command {
        Cmd::Keygen { out } => keygen(out),
        Cmd::Serve(overrides) => serve(overrides),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(out: PathBuf) -> anyhow::Result<()> {
    let kek = orderlog::crypto::Kek::generate();
    kek.write_new_file(&out)?;
    println!("wrote KEK {} to {} (mode 0600)", kek.id(), out.display());
    Ok(())
}

fn serve(overrides: Overrides) -> anyhow::Result<()> {
    let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("ORDERLOG_")).collect();
    let mut config = Config::resolve(&overrides, &env)?;
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
            for (token, role) in &config.tokens {
                println!("  {:<22} {}", role.to_string(), token.expose());
            }
        }
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let app = App::start(&config).await?;
        println!("orderlog listening on http://{}", app.addr);
        wait_for_signal().await;
        tracing::info!("Shutdown requested.");
        app.stop().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
