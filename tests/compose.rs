//! docker-compose.yml cannot be run here (no Docker engine), so this test
//! parses it and checks that it agrees with the code: the port orderlog
//! listens on is the one published, every ORDERLOG_* variable is one the code
//! reads, and the topics it creates are the ones the code uses, with the
//! settings the code would create them with.

use std::collections::BTreeSet;

use clap::CommandFactory;
use orderlog::crypto::keys_topic_for;
use orderlog::crypto::replica::keys_topic_spec;
use orderlog::kafka::{TOPIC_EVENTS, TopicSpec};
use serde_norway::Value;

#[derive(clap::Parser)]
struct Probe {
    #[command(flatten)]
    overrides: orderlog::config::Overrides,
}

fn compose() -> Value {
    serde_norway::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
            .unwrap(),
    )
    .unwrap()
}

/// Every `ORDERLOG_*` variable the code reads.
fn known_env() -> BTreeSet<String> {
    let mut vars: BTreeSet<String> = Probe::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    vars.extend(
        orderlog::config::EXTRA_ENV_VARS
            .iter()
            .map(|s| s.to_string()),
    );
    vars
}

/// The orderlog nodes of the compose file.
fn orderlog_services(c: &Value) -> Vec<String> {
    c["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .filter(|k| k.starts_with("orderlog"))
        .collect()
}

#[test]
fn every_orderlog_variable_in_the_compose_file_is_one_the_code_reads() {
    let c = compose();
    let known = known_env();
    assert!(known.contains("ORDERLOG_BROKERS") && known.contains("ORDERLOG_TOKENS"));
    let nodes = orderlog_services(&c);
    assert_eq!(nodes.len(), 3, "three orderlog nodes: {nodes:?}");
    let mut ids = BTreeSet::new();
    for name in &nodes {
        let env = c["services"][name.as_str()]["environment"]
            .as_mapping()
            .unwrap();
        for (k, _) in env {
            let k = k.as_str().unwrap();
            assert!(
                known.contains(k),
                "{k} in docker-compose.yml is not read by orderlog (known: {known:?})"
            );
        }
        assert_eq!(
            env[&Value::from("ORDERLOG_BROKERS")].as_str(),
            Some("kafka:9092")
        );
        // Each node is reached by the others at the URL it advertises.
        let url = env[&Value::from("ORDERLOG_ADVERTISE_URL")]
            .as_str()
            .unwrap();
        assert_eq!(
            url,
            format!("http://{name}:8080"),
            "{name} advertises itself"
        );
        assert!(
            ids.insert(
                env[&Value::from("ORDERLOG_NODE_ID")]
                    .as_str()
                    .unwrap()
                    .to_owned()
            )
        );
    }
    let kafka_ports: Vec<&str> = c["services"]["kafka"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(kafka_ports.contains(&"9092:9092"));
}

#[test]
fn the_published_port_is_the_one_orderlog_listens_on() {
    let c = compose();
    let listen = c["services"]["orderlog"]["environment"]["ORDERLOG_LISTEN"]
        .as_str()
        .unwrap();
    let port = listen.rsplit(':').next().unwrap();
    let published: Vec<&str> = c["services"]["orderlog"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        published.iter().any(|p| p.ends_with(&format!(":{port}"))),
        "{listen} vs {published:?}"
    );
    let default_port = orderlog::config::DEFAULT_LISTEN.rsplit(':').next().unwrap();
    assert_eq!(
        port, default_port,
        "the compose file keeps the default port"
    );
}

#[test]
fn the_compose_file_creates_the_topics_the_code_uses_with_its_settings() {
    let c = compose();
    let env = &c["services"]["orderlog"]["environment"];
    let topic = env["ORDERLOG_TOPIC"].as_str().unwrap();
    assert_eq!(topic, TOPIC_EVENTS);
    let partitions: i32 = env["ORDERLOG_PARTITIONS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let script = c["services"]["kafka-init"]["command"][0].as_str().unwrap();
    let expected: Vec<TopicSpec> = vec![
        TopicSpec::events(topic, partitions, 1),
        TopicSpec::events(
            format!(
                "{topic}{}",
                orderlog::projections::projector::DEAD_LETTER_SUFFIX
            ),
            1,
            1,
        ),
        keys_topic_spec(&keys_topic_for(topic), partitions, 1),
        orderlog::kafka::members_topic_spec(&orderlog::kafka::members_topic_for(topic), 1),
    ];
    let created: Vec<&str> = script.lines().filter(|l| l.contains("--create")).collect();
    assert_eq!(created.len(), expected.len());
    for spec in expected {
        let line = created
            .iter()
            .find(|l| l.contains(&format!("--topic {} ", spec.name)))
            .unwrap_or_else(|| panic!("topic {} is not created in docker-compose.yml", spec.name));
        assert!(
            line.contains(&format!("--partitions {} ", spec.partitions)),
            "{line}"
        );
        for (k, v) in &spec.config {
            assert!(
                line.contains(&format!("--config {k}={v}")),
                "{} lacks {k}={v}: {line}",
                spec.name
            );
        }
    }
}

/// The number after `flag` in ops/Dockerfile (the first one that is a number).
fn dockerfile_number(flag: &str) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/Dockerfile")).unwrap();
    text.split(flag)
        .skip(1)
        .map(|rest| {
            rest.trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| panic!("ops/Dockerfile sets no {flag}"))
}

#[test]
fn the_kek_reaches_each_node_readable_by_its_user_only() {
    // orderlog refuses a KEK file its group or others may read. A `file:`
    // secret is bind-mounted with the host file's owner and mode (Compose
    // ignores uid, gid and mode for it outside Swarm), so the secret comes
    // from the environment, which Compose writes with the owner and mode given.
    let c = compose();
    let top = &c["secrets"]["orderlog_kek"];
    assert!(
        top["environment"].as_str().is_some() && top.get("file").is_none(),
        "the KEK secret comes from an environment variable: {top:?}"
    );
    let (uid, gid) = (dockerfile_number("--uid"), dockerfile_number("--gid"));
    for name in orderlog_services(&c) {
        let svc = &c["services"][name.as_str()];
        let secrets = svc["secrets"].as_sequence().unwrap();
        let kek = secrets
            .iter()
            .find(|s| s["source"].as_str() == Some("orderlog_kek"))
            .unwrap_or_else(|| panic!("{name} gets the KEK secret in the long syntax"));
        assert_eq!(kek["uid"].as_str(), Some(uid.as_str()), "{name}: uid");
        assert_eq!(kek["gid"].as_str(), Some(gid.as_str()), "{name}: gid");
        // YAML 1.1 readers (Compose) take 0400 as octal; this 1.2 reader keeps
        // the text.
        let mode = match &kek["mode"] {
            Value::String(m) => u32::from_str_radix(m, 8).unwrap(),
            Value::Number(n) => u32::try_from(n.as_u64().unwrap()).unwrap(),
            other => panic!("{name}: mode {other:?}"),
        };
        assert!(
            mode & 0o077 == 0 && mode & 0o400 != 0,
            "{name}: mode {mode:o}"
        );
        let target = kek["target"].as_str().unwrap();
        assert_eq!(
            svc["environment"]["ORDERLOG_KEK_FILE"].as_str(),
            Some(format!("/run/secrets/{target}").as_str()),
            "{name} reads the secret it is given"
        );
    }
}

#[test]
fn plain_http_is_served_knowingly_and_published_on_the_hosts_loopback_only() {
    let c = compose();
    for name in orderlog_services(&c) {
        let svc = &c["services"][name.as_str()];
        let env = &svc["environment"];
        let listen: std::net::SocketAddr =
            env["ORDERLOG_LISTEN"].as_str().unwrap().parse().unwrap();
        let tls = env.get("ORDERLOG_TLS_CERT").is_some();
        let insecure = env
            .get("ORDERLOG_INSECURE_HTTP")
            .and_then(Value::as_str)
            .is_some_and(|v| v == "true");
        assert!(
            orderlog::config::check_plain_http(listen, tls, insecure).is_ok(),
            "{name} would be refused at start"
        );
        if !tls {
            for p in svc["ports"].as_sequence().unwrap() {
                let p = p.as_str().unwrap();
                assert!(
                    p.starts_with("127.0.0.1:"),
                    "{name} publishes plain HTTP beyond the host: {p}"
                );
            }
        }
    }
}

#[test]
fn the_grafana_dashboard_only_plots_metrics_orderlog_exports() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/ops/grafana/orderlog-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut plotted = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("orderlog_") {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
                    assert!(
                        orderlog::telemetry::ALL.contains(&base),
                        "dashboard plots {word}, which orderlog does not export"
                    );
                    plotted.insert(base.to_owned());
                }
            }
        }
    }
    for name in orderlog::telemetry::ALL {
        assert!(
            plotted.contains(*name),
            "{name} is exported but not on the dashboard"
        );
    }
}
