//! `serve`: the HTTP API with everything behind it, until SIGINT or SIGTERM.

use crate::config::{Config, Overrides};

use crate::app::{App, demo_tokens};

pub(crate) fn serve(overrides: Overrides) -> anyhow::Result<()> {
    let mut config = Config::from_env(&overrides)?;
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
    runtime.shutdown_timeout(crate::app::SHUTDOWN_LIMIT);
    result
}

pub(crate) async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
