//! The `orderlog` command line: the clap types and one file per command
//! group (`serve`, `project`, `keys`, `audit`). The binary only calls [`run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Overrides;

mod audit;
mod keys;
mod project;
mod serve;

use audit::{HistoryArgs, ReceiptsArgs, ReplayArgs, SharesArgs, VerifyArgs};
use project::ProjectArgs;

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
    /// Print the OpenAPI document of the HTTP API (JSON). schemas/openapi.json is
    /// this output: `cargo run -- openapi > schemas/openapi.json`.
    Openapi,
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

/// Runs the command line of this process; the exit code to end it with.
pub fn run() -> ExitCode {
    // First: on a CPU without the features this build uses, the next AES
    // instruction would end the process with SIGILL and no word why.
    if let Err(why) = crate::cpu::check() {
        eprintln!("orderlog: {why}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    crate::telemetry::init_logging();
    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Cmd::Keygen { out } => ok(keys::keygen(out)),
        Cmd::Openapi => {
            print!("{}", crate::api::openapi::document_json());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::TlsCerts { out, hosts } => ok(keys::tls_certs(out, hosts)),
        Cmd::Serve(overrides) => ok(serve::serve(overrides)),
        Cmd::Project(args) => ok(project::project(args)),
        Cmd::ViewDigest { data_dir } => ok(project::view_digest(data_dir)),
        Cmd::Keys {
            command:
                KeysCmd::Rotate {
                    config,
                    new_kek_file,
                },
        } => ok(keys::rotate(config, new_kek_file)),
        Cmd::Replay(args) => ok(audit::audit_replay(args)),
        Cmd::Verify(args) => audit::audit_verify(args),
        Cmd::History(args) => ok(audit::audit_history(args)),
        Cmd::Shares(args) => ok(audit::audit_shares(args)),
        Cmd::Receipts(args) => audit::audit_receipts(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn findings_exit(clean: bool) -> ExitCode {
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
