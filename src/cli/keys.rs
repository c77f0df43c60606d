//! Key material: `keygen`, `tls-certs`, `keys rotate`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::audit;
use crate::config::{Config, Overrides};

pub(crate) fn keygen(out: PathBuf) -> anyhow::Result<()> {
    let kek = crate::crypto::Kek::generate();
    kek.write_new_file(&out)?;
    println!("wrote KEK {} to {} (mode 0600)", kek.id(), out.display());
    Ok(())
}

pub(crate) fn tls_certs(out: PathBuf, hosts: Vec<String>) -> anyhow::Result<()> {
    use crate::api::tls::{CertsWritten, write_test_ca};
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

pub(crate) fn rotate(overrides: Overrides, new_kek_file: PathBuf) -> anyhow::Result<()> {
    use crate::crypto::{KekRing, KeyReplica, KeyVault, keys_topic_for};
    let config = Config::from_env(&overrides)?;
    let old = config.kek.load()?;
    let new = crate::crypto::Kek::load_file(&new_kek_file)?;
    anyhow::ensure!(old.id() != new.id(), "the new KEK is the one in use");
    let store = crate::store::Store::open(&config.data_dir)?;
    let vault = KeyVault::new(store, KekRing::new(old.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let (replica, retire_until) = match &config.brokers {
            Some(b) => {
                let settings = crate::kafka::KafkaSettings {
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
            crate::crypto::replica::rotate_kek(
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
