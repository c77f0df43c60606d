//! Configuration, layered: built-in defaults, then a TOML file, then
//! `ORDERLOG_*` environment variables, then command-line flags (clap reads
//! flag-or-env; this module merges the result over the file).
//!
//! Secrets (bearer tokens, the KEK) are held in types whose `Debug` prints
//! `[redacted]`, so a logged config never shows them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::access::{Role, TokenEntry};
use crate::crypto::{Kek, KekError};
use crate::kafka::TOPIC_EVENTS;

pub use crate::access::Secret;

/// The process's `ORDERLOG_*` environment variables, which the
/// configuration reads (the one place they are collected).
pub fn orderlog_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("ORDERLOG_"))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{setting}: {problem}")]
    Invalid {
        setting: &'static str,
        problem: String,
    },
    #[error(transparent)]
    Kek(#[from] KekError),
}

/// The config file's shape. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub brokers: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub topic: Option<String>,
    pub partitions: Option<i32>,
    pub replication: Option<i32>,
    pub kek_file: Option<PathBuf>,
    pub produce_timeout_ms: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub insecure_http: Option<bool>,
    pub accept_v1_events: Option<bool>,
    pub state_cache_orders: Option<usize>,
    pub block_cache_mb: Option<usize>,
    pub idempotency_ttl_hours: Option<u64>,
    pub advertise_url: Option<String>,
    pub node_id: Option<String>,
    pub writer_session_timeout_ms: Option<u64>,
    pub erasure_wait_ms: Option<u64>,
    pub http_header_timeout_ms: Option<u64>,
    pub http_request_timeout_ms: Option<u64>,
    pub http_max_connections: Option<usize>,
    /// `[retention]`: how long personal data is kept (see [`RetentionFile`]).
    #[serde(default)]
    pub retention: RetentionFile,
    /// token = role, or token = "role@name"
    #[serde(default)]
    pub tokens: BTreeMap<Secret, String>,
    /// Passed through to librdkafka (security.protocol, ssl.*, sasl.*, ...).
    #[serde(default)]
    pub kafka: crate::kafka::KafkaExtra,
}

/// The `[retention]` table: periods such as `"30d"`, `"12h"`, `"90s"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    pub cancelled: Option<String>,
    pub identity: Option<String>,
    pub interval: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        // toml's messages quote the offending line, which may hold a token:
        // keep only the first line of the message (position and reason).
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_owned(),
        })
    }
}

/// Values from flags or environment (clap fills these; `None` = not given).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Config file (TOML).
    #[arg(long, env = "ORDERLOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "ORDERLOG_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Kafka bootstrap servers; without them orderlog runs on an embedded, in-memory broker.
    #[arg(long, env = "ORDERLOG_BROKERS")]
    pub brokers: Option<String>,
    /// RocksDB directory (key vault, views).
    #[arg(long, env = "ORDERLOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Event topic.
    #[arg(long, env = "ORDERLOG_TOPIC")]
    pub topic: Option<String>,
    /// Partitions of the event topic when orderlog creates it.
    #[arg(long, env = "ORDERLOG_PARTITIONS")]
    pub partitions: Option<i32>,
    /// Replication factor of the event topic when orderlog creates it.
    #[arg(long, env = "ORDERLOG_REPLICATION")]
    pub replication: Option<i32>,
    /// File holding the KEK (see `orderlog keygen`).
    #[arg(long, env = "ORDERLOG_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// Every command is answered within this (ms): acknowledged by Kafka, or a
    /// retryable 503 saying whether it was written.
    #[arg(long, env = "ORDERLOG_PRODUCE_TIMEOUT_MS")]
    pub produce_timeout_ms: Option<u64>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key too).
    #[arg(long, env = "ORDERLOG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ORDERLOG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other hosts can reach. Refused without
    /// it (bearer tokens and personal data would cross the network in
    /// clear): only behind a TLS-terminating proxy or on a network you trust.
    #[arg(
        long,
        env = "ORDERLOG_INSECURE_HTTP",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_http: bool,
    /// Take events of schema v1 (which carry no log MAC) as written by
    /// orderlog: for a log written before v2 only, since anyone able to
    /// produce to the topic can write one. See `schemas/events-v2.md`.
    #[arg(
        long,
        env = "ORDERLOG_ACCEPT_V1_EVENTS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub accept_v1_events: bool,
    /// Orders the writers keep in memory, all partitions together (the rest
    /// are read from RocksDB). Default 50000.
    #[arg(long, env = "ORDERLOG_STATE_CACHE_ORDERS")]
    pub state_cache_orders: Option<usize>,
    /// RocksDB block cache, shared by every column family (MiB). Default 128.
    #[arg(long, env = "ORDERLOG_BLOCK_CACHE_MB")]
    pub block_cache_mb: Option<usize>,
    /// How long an idempotency key answers a retry with the first outcome
    /// (hours). Default 168 (7 days).
    #[arg(long, env = "ORDERLOG_IDEMPOTENCY_TTL_HOURS")]
    pub idempotency_ttl_hours: Option<u64>,
    /// Base URL other nodes reach this node's API at, for commands forwarded
    /// to the partition's writer. Default: the listen address (with
    /// 127.0.0.1 for an unspecified address).
    #[arg(long, env = "ORDERLOG_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// This node's id in the cluster. Default: one generated once and kept
    /// in the data directory (`node-id`).
    #[arg(long, env = "ORDERLOG_NODE_ID")]
    pub node_id: Option<String>,
    /// How long a node that stopped answering keeps its partitions before
    /// other nodes take them over (ms; the brokers allow 6000 and up by
    /// default). Default 6000.
    #[arg(long, env = "ORDERLOG_WRITER_SESSION_TIMEOUT_MS")]
    pub writer_session_timeout_ms: Option<u64>,
    /// How long an erase request waits for every live node to destroy the
    /// key and purge it from its disk before it answers the receipt (which
    /// then names the nodes still pending). Default 2000 ms.
    #[arg(long, env = "ORDERLOG_ERASURE_WAIT_MS")]
    pub erasure_wait_ms: Option<u64>,
    /// A request's headers must arrive within this, and an idle keep-alive
    /// connection is closed after it (ms). Default 10000.
    #[arg(long, env = "ORDERLOG_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<u64>,
    /// Longest a request may take, body and answer included (ms; 408 after
    /// it). Default 30000; must exceed the produce timeout plus the erasure
    /// wait.
    #[arg(long, env = "ORDERLOG_HTTP_REQUEST_TIMEOUT_MS")]
    pub http_request_timeout_ms: Option<u64>,
    /// Most HTTP connections open at once; one more is closed as it arrives.
    /// Default 4096.
    #[arg(long, env = "ORDERLOG_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Erase a cancelled order's personal data this long after its
    /// cancellation (`30d`, `12h`, `90s`; units ms, s, m, h, d). Default: kept
    /// until erased by request.
    #[arg(long, env = "ORDERLOG_RETENTION_CANCELLED")]
    pub retention_cancelled: Option<String>,
    /// Erase any order's identity class (its ID number) this long after
    /// placement. Default: kept until erased by request.
    #[arg(long, env = "ORDERLOG_RETENTION_IDENTITY")]
    pub retention_identity: Option<String>,
    /// How often the retention scheduler looks for what is due. Default: a
    /// quarter of the shortest period, between 1s and 1m.
    #[arg(long, env = "ORDERLOG_RETENTION_INTERVAL")]
    pub retention_interval: Option<String>,
}

/// Where the KEK comes from.
#[derive(Debug, Clone)]
pub enum KekSource {
    Inline(Secret),
    File(PathBuf),
    /// Embedded demo mode only: a fresh KEK per process.
    Ephemeral,
}

impl KekSource {
    pub fn load(&self) -> Result<Kek, KekError> {
        match self {
            KekSource::Inline(s) => Kek::parse(s.expose()),
            KekSource::File(p) => Kek::load_file(p),
            KekSource::Ephemeral => Ok(Kek::generate()),
        }
    }
}

/// The merged configuration `serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None`: embedded mock cluster.
    pub brokers: Option<String>,
    pub kafka: crate::kafka::KafkaExtra,
    pub data_dir: PathBuf,
    pub topic: String,
    pub partitions: i32,
    pub replication: i32,
    pub kek: KekSource,
    pub tokens: Vec<TokenEntry>,
    pub produce_timeout: Duration,
    /// Certificate chain and key (PEM) for HTTPS; plain HTTP without.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Plain HTTP on a non-loopback address was asked for knowingly
    /// (`--insecure-http`); see [`check_plain_http`].
    pub insecure_http: bool,
    /// Schema-v1 events (no log MAC) are taken as authentic.
    pub accept_v1_events: bool,
    pub state_cache_orders: usize,
    pub block_cache_mb: usize,
    pub idempotency_ttl: Duration,
    /// `None`: derived from the listen address at start.
    pub advertise_url: Option<String>,
    /// `None`: kept in the data directory.
    pub node_id: Option<String>,
    pub writer_session_timeout: Duration,
    pub erasure_wait: Duration,
    pub http: crate::api::server::Limits,
    pub retention: crate::erasure::retention::RetentionPolicy,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Variables read outside the flag parser (flags' own variables are declared
/// on [`Overrides`]). `ORDERLOG_KAFKA_<SETTING>` passes any librdkafka setting.
pub const EXTRA_ENV_VARS: &[&str] = &["ORDERLOG_TOKENS", "ORDERLOG_KEK", "ORDERLOG_LOG"];
pub const DEFAULT_PARTITIONS: i32 = 6;

/// `token=role,token=role@name`, as in `ORDERLOG_TOKENS`.
pub fn parse_tokens(list: &str) -> Result<Vec<TokenEntry>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (token, role) = pair.split_once('=').ok_or(ConfigError::Invalid {
                setting: "ORDERLOG_TOKENS",
                problem: "each entry must be token=role".into(),
            })?;
            parse_token_entry(token, role)
        })
        .collect()
}

/// Least spread of characters a token must show (its length times the
/// Shannon entropy of its characters, in bits): a random 16-character hex
/// token has about 57, `aaaaaaaaaaaaaaaa1` about 5.
pub const MIN_TOKEN_BITS: f64 = 48.0;

/// A rough upper bound of a token's entropy from its character spread.
fn token_bits(token: &str) -> f64 {
    let mut counts = BTreeMap::new();
    for c in token.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = token.chars().count() as f64;
    let per_char: f64 = counts
        .values()
        .map(|k| {
            let p = *k as f64 / n;
            -p * p.log2()
        })
        .sum();
    per_char * n
}

/// One token and its `role` or `role@name`; the name is what access logs
/// show for the token (the role's name when none is given).
fn parse_token_entry(token: &str, spec: &str) -> Result<TokenEntry, ConfigError> {
    if token.len() < 16 {
        return Err(ConfigError::Invalid {
            setting: "tokens",
            problem: "a token must have at least 16 characters".into(),
        });
    }
    let (role, name) = match spec.split_once('@') {
        Some((role, name)) => (role, Some(name.trim())),
        None => (spec, None),
    };
    let role = Role::parse(role).map_err(|problem| ConfigError::Invalid {
        setting: "tokens",
        problem,
    })?;
    if let Some(name) = name
        && (name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        // Names the role, never the token (nor the name: a token pasted
        // in the wrong place must not be echoed either).
        return Err(ConfigError::Invalid {
            setting: "tokens",
            problem: format!(
                "the name of a token for role {role} (after '@') must be 1 to 64 letters, digits, '-', '_' or '.'"
            ),
        });
    }
    let name = name.map_or_else(|| role.to_string(), str::to_owned);
    let bits = token_bits(token);
    if bits < MIN_TOKEN_BITS {
        // Names the role, never the token.
        return Err(ConfigError::Invalid {
            setting: "tokens",
            problem: format!(
                "the token for role {role} is guessable (about {bits:.0} bits by the spread of its characters, at least {MIN_TOKEN_BITS:.0} needed); make one with `openssl rand -hex 16`"
            ),
        });
    }
    Ok((Secret::new(token), role, name))
}

/// Whether `serve` may listen on `listen`: plain HTTP only on a loopback
/// address (127.0.0.0/8, ::1), unless TLS is configured or `insecure_http`
/// says the operator knows what is in front (a TLS-terminating proxy, a
/// private network). Otherwise bearer tokens and personal data would cross
/// the network in clear.
pub fn check_plain_http(
    listen: SocketAddr,
    tls: bool,
    insecure_http: bool,
) -> Result<(), ConfigError> {
    if tls || insecure_http || listen.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        setting: "listen",
        problem: format!(
            "refusing to serve plain HTTP on {listen}, which is not a loopback address: bearer tokens and personal data would cross the network in clear. Configure TLS (--tls-cert and --tls-key, or ORDERLOG_TLS_CERT and ORDERLOG_TLS_KEY), listen on a loopback address such as 127.0.0.1, or, behind a TLS-terminating proxy or on a network you trust, pass --insecure-http (ORDERLOG_INSECURE_HTTP=true) knowingly"
        ),
    })
}

impl Config {
    /// [`check_plain_http`] for this configuration: `serve` calls it first.
    pub fn check_plain_http(&self) -> Result<(), ConfigError> {
        check_plain_http(self.listen, self.tls.is_some(), self.insecure_http)
    }

    /// Merges defaults, the file, the environment and flags. `env` is passed in
    /// (rather than read here) so tests can give their own.
    /// [`Config::resolve`] with the process's environment ([`orderlog_env`]).
    pub fn from_env(o: &Overrides) -> Result<Self, ConfigError> {
        Self::resolve(o, &orderlog_env())
    }

    pub fn resolve(o: &Overrides, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        Self::resolve_inner(o, env, true)
    }

    /// As [`Config::resolve`], but a real cluster without a KEK is accepted
    /// (`kek` is then [`KekSource::Ephemeral`]): for read-only audit commands
    /// that never open a sealed field. Whoever needs the KEK must check.
    pub fn resolve_without_kek(
        o: &Overrides,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        Self::resolve_inner(o, env, false)
    }

    fn resolve_inner(
        o: &Overrides,
        env: &BTreeMap<String, String>,
        require_kek: bool,
    ) -> Result<Self, ConfigError> {
        let file = match &o.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let mut tokens = file
            .tokens
            .iter()
            .map(|(t, r)| parse_token_entry(t.expose(), r))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(list) = env.get("ORDERLOG_TOKENS") {
            tokens = parse_tokens(list)?;
        }
        let mut kafka = file.kafka.clone();
        kafka.add_env(env);
        let kek = if let Some(k) = env.get("ORDERLOG_KEK") {
            KekSource::Inline(Secret::new(k.clone()))
        } else if let Some(p) = o.kek_file.clone().or(file.kek_file) {
            KekSource::File(p)
        } else {
            KekSource::Ephemeral
        };
        let brokers = o
            .brokers
            .clone()
            .or(file.brokers)
            .filter(|b| !b.trim().is_empty());
        if require_kek && brokers.is_some() && matches!(kek, KekSource::Ephemeral) {
            return Err(ConfigError::Kek(KekError::Missing));
        }
        let partitions = o
            .partitions
            .or(file.partitions)
            .unwrap_or(DEFAULT_PARTITIONS);
        if !(1..=1024).contains(&partitions) {
            return Err(ConfigError::Invalid {
                setting: "partitions",
                problem: "must be between 1 and 1024".into(),
            });
        }
        let replication = o.replication.or(file.replication).unwrap_or(1);
        if !(1..=16).contains(&replication) {
            return Err(ConfigError::Invalid {
                setting: "replication",
                problem: "must be between 1 and 16".into(),
            });
        }
        let state_cache_orders = o
            .state_cache_orders
            .or(file.state_cache_orders)
            .unwrap_or(crate::service::partition::DEFAULT_CACHE_ORDERS);
        if !(1..=100_000_000).contains(&state_cache_orders) {
            return Err(ConfigError::Invalid {
                setting: "state_cache_orders",
                problem: "must be between 1 and 100000000".into(),
            });
        }
        let block_cache_mb = o
            .block_cache_mb
            .or(file.block_cache_mb)
            .unwrap_or(crate::store::DEFAULT_BLOCK_CACHE_MB);
        if !(8..=1_048_576).contains(&block_cache_mb) {
            return Err(ConfigError::Invalid {
                setting: "block_cache_mb",
                problem: "must be between 8 and 1048576".into(),
            });
        }
        let ttl_hours = o
            .idempotency_ttl_hours
            .or(file.idempotency_ttl_hours)
            .unwrap_or(crate::service::state::DEFAULT_IDEMPOTENCY_TTL.as_secs() / 3600);
        if !(1..=24 * 3650).contains(&ttl_hours) {
            return Err(ConfigError::Invalid {
                setting: "idempotency_ttl_hours",
                problem: "must be between 1 and 87600 (ten years)".into(),
            });
        }
        let advertise_url = o.advertise_url.clone().or(file.advertise_url);
        if let Some(u) = &advertise_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                setting: "advertise_url",
                problem: "must start with http:// or https://".into(),
            });
        }
        let node_id = o.node_id.clone().or(file.node_id);
        if let Some(id) = &node_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(ConfigError::Invalid {
                setting: "node_id",
                problem: "must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
            });
        }
        let session_ms = o
            .writer_session_timeout_ms
            .or(file.writer_session_timeout_ms)
            .unwrap_or(6000);
        if !(1000..=300_000).contains(&session_ms) {
            return Err(ConfigError::Invalid {
                setting: "writer_session_timeout_ms",
                problem: "must be between 1000 and 300000".into(),
            });
        }
        let erasure_wait_ms = o.erasure_wait_ms.or(file.erasure_wait_ms).unwrap_or(2000);
        if erasure_wait_ms > 60_000 {
            return Err(ConfigError::Invalid {
                setting: "erasure_wait_ms",
                problem: "must be at most 60000".into(),
            });
        }
        let period = |setting: &'static str, flag: &Option<String>, file: &Option<String>| {
            flag.as_ref()
                .or(file.as_ref())
                .map(|t| {
                    crate::erasure::retention::parse_period(t)
                        .map_err(|problem| ConfigError::Invalid { setting, problem })
                })
                .transpose()
        };
        let cancelled = period(
            "retention.cancelled",
            &o.retention_cancelled,
            &file.retention.cancelled,
        )?;
        let identity = period(
            "retention.identity",
            &o.retention_identity,
            &file.retention.identity,
        )?;
        let retention = crate::erasure::retention::RetentionPolicy {
            cancelled,
            identity,
            interval: period(
                "retention.interval",
                &o.retention_interval,
                &file.retention.interval,
            )?
            .unwrap_or_else(|| {
                crate::erasure::retention::RetentionPolicy::default_interval(cancelled, identity)
            }),
        };
        if retention.interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                setting: "retention.interval",
                problem: "must be at least 100ms".into(),
            });
        }
        let defaults = crate::api::server::Limits::default();
        let http = crate::api::server::Limits {
            header_read_timeout: o
                .http_header_timeout_ms
                .or(file.http_header_timeout_ms)
                .map_or(defaults.header_read_timeout, Duration::from_millis),
            request_timeout: o
                .http_request_timeout_ms
                .or(file.http_request_timeout_ms)
                .map_or(defaults.request_timeout, Duration::from_millis),
            max_connections: o
                .http_max_connections
                .or(file.http_max_connections)
                .unwrap_or(defaults.max_connections),
        };
        if !(Duration::from_millis(100)..=Duration::from_secs(600))
            .contains(&http.header_read_timeout)
        {
            return Err(ConfigError::Invalid {
                setting: "http_header_timeout_ms",
                problem: "must be between 100 and 600000".into(),
            });
        }
        let produce_ms = o
            .produce_timeout_ms
            .or(file.produce_timeout_ms)
            .unwrap_or(10_000);
        if http.request_timeout
            <= Duration::from_millis(produce_ms) + Duration::from_millis(erasure_wait_ms)
        {
            return Err(ConfigError::Invalid {
                setting: "http_request_timeout_ms",
                problem: format!(
                    "must exceed the produce timeout plus the erasure wait ({} ms), or commands would be cut off before they are answered",
                    produce_ms + erasure_wait_ms
                ),
            });
        }
        if http.max_connections == 0 {
            return Err(ConfigError::Invalid {
                setting: "http_max_connections",
                problem: "must be at least 1".into(),
            });
        }
        let tls = match (
            o.tls_cert.clone().or(file.tls_cert),
            o.tls_key.clone().or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    setting: "tls",
                    problem: "a TLS certificate needs its key and the other way round".into(),
                });
            }
        };
        Ok(Self {
            listen: o
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            brokers,
            kafka,
            data_dir: o
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("orderlog-data")),
            topic: o
                .topic
                .clone()
                .or(file.topic)
                .unwrap_or_else(|| TOPIC_EVENTS.to_owned()),
            partitions,
            replication,
            kek,
            tokens,
            produce_timeout: Duration::from_millis(
                o.produce_timeout_ms
                    .or(file.produce_timeout_ms)
                    .unwrap_or(10_000),
            ),
            tls,
            insecure_http: o.insecure_http || file.insecure_http.unwrap_or(false),
            accept_v1_events: o.accept_v1_events || file.accept_v1_events.unwrap_or(false),
            state_cache_orders,
            block_cache_mb,
            idempotency_ttl: Duration::from_secs(ttl_hours * 3600),
            advertise_url,
            node_id,
            writer_session_timeout: Duration::from_millis(session_ms),
            erasure_wait: Duration::from_millis(erasure_wait_ms),
            http,
            retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orderlog.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\npartitions = 3\ntopic = \"file.topic\"\n[kafka]\n\"security.protocol\" = \"SSL\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(path),
            partitions: Some(12),
            ..Default::default()
        };
        let c = Config::resolve(&o, &env(&[])).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.partitions, 12);
        assert_eq!(c.topic, "file.topic");
        assert_eq!(c.kafka["security.protocol"], "SSL");
        assert!(c.brokers.is_none());
    }

    #[test]
    fn retention_comes_from_the_file_or_flags_and_a_bad_period_names_its_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orderlog.toml");
        std::fs::write(
            &path,
            "retention.cancelled = \"30d\"\n[kafka]\n\"acks\" = \"all\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(path.clone()),
            retention_identity: Some("180d".into()),
            ..Default::default()
        };
        let c = Config::resolve(&o, &env(&[])).unwrap();
        assert_eq!(
            c.retention.cancelled,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            c.retention.identity,
            Some(Duration::from_secs(180 * 86_400))
        );
        assert_eq!(c.retention.interval, Duration::from_secs(60));
        assert!(
            Config::resolve(&Overrides::default(), &env(&[]))
                .unwrap()
                .retention
                .is_off()
        );
        let bad = Overrides {
            retention_cancelled: Some("3w".into()),
            ..Default::default()
        };
        let e = Config::resolve(&bad, &env(&[])).unwrap_err().to_string();
        assert!(e.starts_with("retention.cancelled: unknown unit"), "{e}");
    }

    #[test]
    fn tokens_and_kafka_settings_come_from_the_environment() {
        let c = Config::resolve(
            &Overrides::default(),
            &env(&[
                (
                    "ORDERLOG_TOKENS",
                    "checkout-7f3a91c2d4e5=checkout, sf-express-b81e6d0a9c=logistics:sf-express",
                ),
                ("ORDERLOG_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ]),
        )
        .unwrap();
        assert_eq!(c.tokens.len(), 2);
        assert_eq!(c.tokens[1].1.to_string(), "logistics:sf-express");
        assert_eq!(c.kafka["sasl.mechanism"], "SCRAM-SHA-512");
        assert!(
            !format!("{c:?}").contains("checkout-7f3a91c2d4e5"),
            "tokens never printed"
        );
    }

    #[test]
    fn no_debug_output_prints_a_token_or_a_kafka_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("orderlog.toml");
        std::fs::write(
            &file,
            "[tokens]\nfile-token-0123456789 = \"checkout\"\n[kafka]\n\"sasl.password\" = \"kafka-pass-0123\"\n\"ssl.key.password\" = \"key-pass-0123\"\n\"sasl.username\" = \"orderlog\"\n",
        )
        .unwrap();
        let parsed = FileConfig::load(&file).unwrap();
        let c = Config::resolve(
            &Overrides {
                config: Some(file),
                ..Overrides::default()
            },
            &env(&[]),
        )
        .unwrap();
        let settings = crate::kafka::KafkaSettings {
            brokers: "b:9092".into(),
            extra: c.kafka.clone(),
        };
        let projector = crate::projections::ProjectorConfig {
            settings: settings.clone(),
            topic: "t".into(),
            assignment: crate::projections::Assignment::All,
            batch_max: 1,
            max_rate: 0,
            dead_letter: false,
            idempotency_ttl: std::time::Duration::ZERO,
            purge: None,
            log_keys: std::sync::Arc::new(crate::crypto::logkey::SharedLogKeys::new(
                crate::crypto::LogKeys::from_ring(&crate::crypto::KekRing::new(
                    crate::crypto::Kek::generate(),
                )),
            )),
        };
        for printed in [
            format!("{parsed:?}"),
            format!("{c:?}"),
            format!("{settings:?}"),
            format!("{projector:?}"),
        ] {
            for secret in ["file-token-0123456789", "kafka-pass-0123", "key-pass-0123"] {
                assert!(!printed.contains(secret), "{secret} printed: {printed}");
            }
            assert!(printed.contains("[redacted]"), "{printed}");
        }
        assert!(
            format!("{settings:?}").contains("orderlog"),
            "non-secret settings still shown"
        );
    }

    #[test]
    fn a_real_cluster_needs_a_kek() {
        let o = Overrides {
            brokers: Some("127.0.0.1:9092".into()),
            ..Default::default()
        };
        assert!(matches!(
            Config::resolve(&o, &env(&[])),
            Err(ConfigError::Kek(KekError::Missing))
        ));
        // Audit commands that open nothing sealed may go without one.
        let c = Config::resolve_without_kek(&o, &env(&[])).unwrap();
        assert!(matches!(c.kek, KekSource::Ephemeral));
    }

    #[test]
    fn bad_settings_are_named() {
        let err = Config::resolve(
            &Overrides {
                partitions: Some(0),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("partitions"), "{err}");
        let err = Config::resolve(
            &Overrides::default(),
            &env(&[("ORDERLOG_TOKENS", "short=checkout")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("16 characters"));
        let err = parse_tokens("aaaaaaaaaaaaaaaaaa=janitor").unwrap_err();
        assert!(err.to_string().contains("janitor"), "{err}");
    }

    #[test]
    fn guessable_tokens_are_refused_without_being_echoed() {
        for weak in ["aaaaaaaaaaaaaaaa1", "checkoutcheckout", "1111111122222222"] {
            let err = parse_tokens(&format!("{weak}=checkout")).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("guessable") && text.contains("checkout"),
                "{text}"
            );
            assert!(!text.contains(weak), "the token is echoed: {text}");
        }
        // Random ones of the minimum length pass: 16 hex, 16 base64-like.
        for strong in [
            "9f2c47e1a05bd368",
            "Xq7pL2vR9mKd4TzW",
            "test-token-merchant-m-1",
        ] {
            assert!(
                parse_tokens(&format!("{strong}=checkout")).is_ok(),
                "{strong}: {:.0} bits",
                token_bits(strong)
            );
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listne = \"127.0.0.1:1\"\n").unwrap();
        let err = FileConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn tokens_are_named_by_their_role_unless_given_a_name() {
        let t = parse_tokens(
            "9f2c47e1a05bd368=auditor@alice.w, Xq7pL2vR9mKd4TzW=logistics:sf-express, 3e9a0c51d27b84f6=merchant:m-1@m1-backend",
        )
        .unwrap();
        let named: Vec<(String, &str)> = t
            .iter()
            .map(|(_, role, name)| (role.to_string(), name.as_str()))
            .collect();
        assert_eq!(
            named,
            vec![
                ("auditor".to_owned(), "alice.w"),
                ("logistics:sf-express".to_owned(), "logistics:sf-express"),
                ("merchant:m-1".to_owned(), "m1-backend"),
            ]
        );
        for bad in ["auditor@", "auditor@al ice", "auditor@a/b"] {
            let err = parse_tokens(&format!("9f2c47e1a05bd368={bad}")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("name") && text.contains("auditor"), "{text}");
            assert!(
                !text.contains("9f2c47e1a05bd368"),
                "the token is echoed: {text}"
            );
        }
    }

    #[test]
    fn plain_http_is_refused_off_loopback_unless_tls_or_insecure_http() {
        let allowed = |addr: &str, tls: bool, insecure: bool| {
            check_plain_http(addr.parse().unwrap(), tls, insecure).is_ok()
        };
        for addr in [
            "127.0.0.1:8080",
            "127.10.20.30:0",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(allowed(addr, false, false), "{addr} is loopback");
        }
        for addr in [
            "0.0.0.0:8080",
            "[::]:8080",
            "10.0.0.5:8080",
            "192.168.1.20:80",
        ] {
            assert!(!allowed(addr, false, false), "{addr} is refused");
            assert!(allowed(addr, true, false), "{addr} with TLS");
            assert!(allowed(addr, false, true), "{addr} with --insecure-http");
        }
        let err = check_plain_http("0.0.0.0:8080".parse().unwrap(), false, false)
            .unwrap_err()
            .to_string();
        for needle in ["0.0.0.0:8080", "--tls-cert", "--insecure-http"] {
            assert!(err.contains(needle), "{needle} missing: {err}");
        }
    }

    #[test]
    fn insecure_http_comes_from_the_flag_or_the_file() {
        #[derive(clap::Parser)]
        struct Probe {
            #[command(flatten)]
            o: Overrides,
        }
        use clap::Parser;
        let c = Config::resolve(
            &Overrides {
                listen: Some("0.0.0.0:8080".parse().unwrap()),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap();
        assert!(!c.insecure_http);
        assert!(c.check_plain_http().is_err());
        let flag = Probe::try_parse_from(["probe", "--listen", "0.0.0.0:8080", "--insecure-http"])
            .unwrap()
            .o;
        let c = Config::resolve(&flag, &env(&[])).unwrap();
        assert!(c.insecure_http && c.check_plain_http().is_ok());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orderlog.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:8080\"\ninsecure_http = true\n").unwrap();
        let c = Config::resolve(
            &Overrides {
                config: Some(path),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap();
        assert!(c.insecure_http && c.check_plain_http().is_ok());
    }
}
