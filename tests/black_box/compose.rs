//! docker-compose.yml cannot be run here (no Docker engine), so this test
//! parses it and checks that it agrees with the code: the port orderlog
//! listens on is the one published, every ORDERLOG_* variable is one the code
//! reads, and the topics it creates are the ones the code uses, with the
//! settings the code would create them with.
//!
//! It also checks that the deployment is secure as docker-compose.yml's header
//! says: HTTPS on every node; Kafka on SASL_SSL with SCRAM, its port not
//! published, an authorizer that denies what no ACL allows, and ACLs that let
//! only orderlog touch the key topic; no password written in the file.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use orderlog::api::tls::{CA_FILE, CERT_FILE, KEY_FILE, KEYSTORE_FILE};
use orderlog::crypto::keys_topic_for;
use orderlog::crypto::replica::keys_topic_spec;
use orderlog::kafka::{TOPIC_EVENTS, TopicSpec};
use serde_norway::Value;

#[derive(clap::Parser)]
struct Probe {
    #[command(flatten)]
    overrides: orderlog::config::Overrides,
}

/// Where the `certs` service writes and every other service mounts its volume.
const CERTS_DIR: &str = "/certs";

/// The uid the apache/kafka image runs as (its `appuser`, the first user
/// `adduser` makes on Alpine). Nothing in this repository defines it, so it is
/// written here once; the `certs` service hands Kafka's keystore to it.
const KAFKA_IMAGE_UID: &str = "1000";

/// Prefix of the variables orderlog passes to librdkafka as settings
/// (`ORDERLOG_KAFKA_SASL_USERNAME` is `sasl.username`).
const KAFKA_SETTING_PREFIX: &str = "ORDERLOG_KAFKA_";

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

/// The script a service runs (`entrypoint: [sh, -c]`, `command: [script]`).
fn script<'a>(c: &'a Value, service: &str) -> &'a str {
    c["services"][service]["command"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{service} runs a script given as its command"))
}

/// The lines of the here-document by which `script` writes a file whose name
/// ends with `file` (`cat > ".../file" <<EOF`, up to `EOF`).
fn heredoc<'a>(script: &'a str, file: &str) -> Vec<&'a str> {
    let mut lines = script.lines();
    let start = lines
        .by_ref()
        .find(|l| l.contains(&format!("{file}\" <<")) || l.contains(&format!("{file} <<")))
        .unwrap_or_else(|| panic!("no here-document writes {file}"));
    let end = start
        .rsplit("<<")
        .next()
        .unwrap()
        .trim()
        .trim_matches(|c: char| c == '\'' || c == '"' || c == '-');
    lines.take_while(|l| l.trim() != end).collect()
}

/// `key=value` lines, comments skipped, as a Java properties file reads them.
fn properties(lines: &[&str]) -> BTreeMap<String, String> {
    lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not a property: {l}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn prop<'a>(props: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    props
        .get(key)
        .unwrap_or_else(|| panic!("Kafka's server.properties sets no {key}"))
}

/// Kafka's broker configuration, as the kafka service's entrypoint writes it.
fn server_properties(c: &Value) -> BTreeMap<String, String> {
    properties(&heredoc(script(c, "kafka"), "server.properties"))
}

/// The values after each `flag` in a whitespace-separated command line,
/// without shell quotes.
fn flag_values(words: &[&str], flag: &str) -> Vec<String> {
    words
        .windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| {
            w[1].trim_matches(|c: char| c == '\'' || c == '"')
                .to_owned()
        })
        .collect()
}

/// The volumes a service mounts, in the short syntax.
fn mounts(svc: &Value) -> Vec<&str> {
    svc["volumes"]
        .as_sequence()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every string in `v`, mapping keys included.
fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Sequence(items) => {
            for item in items {
                strings(item, out);
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m {
                strings(k, out);
                strings(v, out);
            }
        }
        Value::Tagged(t) => strings(&t.value, out),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Every `${NAME...}` Compose substitutes in `s` (`$$` is a `$` for the
/// shell), as the name and what follows it up to the closing brace
/// (`:?message`, `:-default`, or nothing).
fn interpolations(s: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .unwrap_or_else(|| panic!("an unclosed ${{ in {s:?}"));
            let name_len = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(body.len())
                .min(end);
            found.push((body[..name_len].to_owned(), body[name_len..end].to_owned()));
            rest = &body[end + 1..];
        } else {
            rest = after;
        }
    }
    found
}

/// The host variable a `${NAME:?message}` value takes: Compose refuses to
/// start while it is unset, and there is no default. Panics on anything else,
/// a literal value above all (`what` names the value; the value itself is
/// not printed, since it may be a password).
fn required_var<'a>(value: &'a str, what: &str) -> &'a str {
    let inner = value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .unwrap_or_else(|| {
            panic!("{what} is written in docker-compose.yml, not taken from the host")
        });
    let (name, message) = inner.split_once(":?").unwrap_or_else(|| {
        panic!("{what} does not require its variable: `${{NAME:?message}}`, with no default")
    });
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
        "{what} comes from the variable {name:?}"
    );
    assert!(
        !message.trim().is_empty(),
        "{what}: the message says what to set when {name} is missing"
    );
    name
}

/// `key` in a `[key=value,key=value]` list.
fn list_field<'a>(fields: &'a str, key: &str) -> Option<&'a str> {
    fields
        .split(',')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The SCRAM users Kafka's storage is formatted with (`--add-scram`), each
/// with the host variable its password comes from.
fn scram_users(c: &Value) -> BTreeMap<String, String> {
    let env = &c["services"]["kafka"]["environment"];
    let mut users = BTreeMap::new();
    for line in script(c, "kafka")
        .lines()
        .filter(|l| l.contains("--add-scram"))
    {
        let fields = line
            .split_once("SCRAM-SHA-512=[")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(fields, _)| fields)
            .unwrap_or_else(|| panic!("a SCRAM-SHA-512 user: {line}"));
        let name = list_field(fields, "name").unwrap_or_else(|| panic!("a name: {line}"));
        let var = list_field(fields, "password")
            .and_then(|p| p.strip_prefix("$$"))
            .unwrap_or_else(|| panic!("{name}'s password comes from a variable"));
        let value = env[var]
            .as_str()
            .unwrap_or_else(|| panic!("the kafka service has no {var}"));
        assert!(
            users
                .insert(
                    name.to_owned(),
                    required_var(value, &format!("kafka's {var}")).to_owned()
                )
                .is_none(),
            "{name} is added twice"
        );
    }
    users
}

/// One `kafka-acls.sh --add` line of kafka-init: who gets what, on what.
#[derive(Debug)]
struct Grant {
    principal: String,
    operations: BTreeSet<String>,
    topics: Vec<String>,
    prefixed: bool,
    groups: Vec<String>,
    transactional_ids: Vec<String>,
    cluster: bool,
    line: String,
}

impl Grant {
    /// Whether this grant covers `topic`.
    fn reaches_topic(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| {
            t == "*"
                || if self.prefixed {
                    topic.starts_with(t.as_str())
                } else {
                    t == topic
                }
        })
    }

    fn operations_are(&self, ops: &[&str]) -> bool {
        self.operations == ops.iter().map(|o| o.to_string()).collect::<BTreeSet<_>>()
    }
}

fn grants(c: &Value) -> Vec<Grant> {
    script(c, "kafka-init")
        .lines()
        .filter(|l| l.contains("--allow-principal"))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let principals = flag_values(&words, "--allow-principal");
            assert_eq!(
                principals.len(),
                1,
                "one allowed principal per line: {line}"
            );
            let patterns = flag_values(&words, "--resource-pattern-type");
            assert!(
                patterns.is_empty() || patterns == ["prefixed"] || patterns == ["literal"],
                "{line}"
            );
            Grant {
                principal: principals[0].clone(),
                operations: flag_values(&words, "--operation").into_iter().collect(),
                topics: flag_values(&words, "--topic"),
                prefixed: patterns == ["prefixed"],
                groups: flag_values(&words, "--group"),
                transactional_ids: flag_values(&words, "--transactional-id"),
                cluster: words.contains(&"--cluster"),
                line: line.trim().to_owned(),
            }
        })
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
            // ORDERLOG_KAFKA_<SETTING> is any librdkafka setting; the next
            // tests check those librdkafka takes.
            assert!(
                known.contains(k) || k.starts_with(KAFKA_SETTING_PREFIX),
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
            format!("https://{name}:8080"),
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
fn no_service_publishes_kafkas_ports() {
    // Clients on the host use `docker compose exec kafka ...` or orderlog's
    // HTTPS API; nothing outside the compose network reaches the broker.
    let c = compose();
    let server = server_properties(&c);
    let kafka_ports: BTreeSet<String> = prop(&server, "listeners")
        .split(',')
        .map(|l| l.rsplit(':').next().unwrap().to_owned())
        .collect();
    assert!(kafka_ports.contains("9092"), "{kafka_ports:?}");
    let kafka = &c["services"]["kafka"];
    assert!(
        kafka.get("ports").is_none(),
        "kafka publishes {:?}",
        kafka["ports"]
    );
    assert!(
        kafka.get("network_mode").is_none(),
        "kafka stays on the compose network"
    );
    for (name, svc) in c["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            !svc["network_mode"]
                .as_str()
                .is_some_and(|m| m == "host" || m.contains("kafka")),
            "{name} shares a network namespace that exposes Kafka"
        );
        for p in svc["ports"].as_sequence().into_iter().flatten() {
            let target = match p {
                // "host:container", "ip:host:container", "container", each
                // perhaps with "/tcp".
                Value::String(s) => s.rsplit(':').next().unwrap(),
                Value::Mapping(_) => p["target"].as_str().unwrap_or_default(),
                other => panic!("{name}: a port as {other:?}"),
            };
            let target = target.split('/').next().unwrap();
            let target_number = p["target"].as_u64().map(|n| n.to_string());
            for t in [Some(target.to_owned()), target_number]
                .into_iter()
                .flatten()
            {
                assert!(
                    !kafka_ports.contains(&t),
                    "{name} publishes Kafka's port {t}: {p:?}"
                );
            }
        }
    }
}

#[test]
fn kafka_speaks_sasl_ssl_with_scram_to_all_but_its_own_controller() {
    let c = compose();
    let server = server_properties(&c);
    let protocols: BTreeMap<&str, &str> = prop(&server, "listener.security.protocol.map")
        .split(',')
        .map(|p| p.split_once(':').unwrap())
        .collect();
    // A listener named after a protocol needs no entry in the map.
    let protocol = |listener: &str| -> String {
        protocols
            .get(listener)
            .copied()
            .unwrap_or(listener)
            .to_owned()
    };
    let controller = prop(&server, "controller.listener.names");
    let listeners: Vec<(&str, &str)> = prop(&server, "listeners")
        .split(',')
        .map(|l| l.split_once("://").unwrap())
        .collect();
    assert!(listeners.iter().any(|(name, _)| *name == controller));
    for &(name, address) in &listeners {
        if name == controller {
            // Unauthenticated, and the broker reaches it as User:ANONYMOUS,
            // a super user: only this container may connect.
            assert_eq!(protocol(name), "PLAINTEXT", "the controller listener");
            assert!(
                address.starts_with("127.0.0.1:"),
                "the PLAINTEXT controller listener binds {address}, not the loopback interface only"
            );
        } else {
            assert_eq!(protocol(name), "SASL_SSL", "listener {name}");
        }
    }
    for l in prop(&server, "advertised.listeners").split(',') {
        let (name, _) = l.split_once("://").unwrap();
        assert_eq!(protocol(name), "SASL_SSL", "advertised {l}");
    }
    assert!(
        prop(&server, "controller.quorum.voters")
            .split(',')
            .all(|v| v.contains("@127.0.0.1:")),
        "the controller is reached on the loopback interface"
    );
    let inter_broker = prop(&server, "inter.broker.listener.name");
    assert_eq!(protocol(inter_broker), "SASL_SSL", "between brokers");

    // SCRAM-SHA-512 only, the broker itself logging in as admin.
    assert_eq!(prop(&server, "sasl.enabled.mechanisms"), "SCRAM-SHA-512");
    assert_eq!(
        prop(&server, "sasl.mechanism.inter.broker.protocol"),
        "SCRAM-SHA-512"
    );
    let jaas = prop(
        &server,
        &format!(
            "listener.name.{}.scram-sha-512.sasl.jaas.config",
            inter_broker.to_ascii_lowercase()
        ),
    );
    assert!(
        jaas.contains("ScramLoginModule required") && jaas.contains("username=\"admin\""),
        "the broker logs in to itself as admin"
    );

    // TLS from the certs volume, in the files the certs service writes.
    let certs = |file: &str| format!("{CERTS_DIR}/{file}");
    assert_eq!(prop(&server, "ssl.keystore.type"), "PEM");
    assert_eq!(prop(&server, "ssl.keystore.location"), certs(KEYSTORE_FILE));
    assert_eq!(prop(&server, "ssl.truststore.type"), "PEM");
    assert_eq!(prop(&server, "ssl.truststore.location"), certs(CA_FILE));
    assert!(
        mounts(&c["services"]["kafka"]).contains(&format!("certs:{CERTS_DIR}:ro").as_str()),
        "kafka mounts the certificates read-only"
    );

    // What no ACL allows is denied; the only super users are the admin and
    // the broker on its loopback controller listener.
    assert_eq!(
        prop(&server, "authorizer.class.name"),
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    );
    assert_eq!(prop(&server, "allow.everyone.if.no.acl.found"), "false");
    let super_users: BTreeSet<&str> = prop(&server, "super.users").split(';').collect();
    assert_eq!(
        super_users,
        BTreeSet::from(["User:admin", "User:ANONYMOUS"])
    );

    // The SCRAM users: admin, and one per principal the ACLs name.
    let users = scram_users(&c);
    assert_eq!(
        users.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["admin", "auditor", "orderlog"])
    );
    for g in grants(&c) {
        let user = g.principal.strip_prefix("User:").unwrap();
        assert!(
            users.contains_key(user),
            "{} has no SCRAM user",
            g.principal
        );
    }
    // kafka-init logs in as admin with the password admin was made with.
    let init = properties(&heredoc(script(&c, "kafka-init"), "admin.properties"));
    let init_jaas = &init["sasl.jaas.config"];
    assert!(init_jaas.contains("username=\"admin\""), "{init:?}");
    let init_var = init_jaas
        .split("password=\"$$")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("kafka-init's password comes from a variable");
    assert_eq!(
        Some(required_var(
            c["services"]["kafka-init"]["environment"][init_var]
                .as_str()
                .unwrap(),
            "kafka-init's admin password"
        )),
        users.get("admin").map(String::as_str)
    );
    assert_eq!(init["security.protocol"], "SASL_SSL");
    assert_eq!(init["sasl.mechanism"], "SCRAM-SHA-512");
    assert_eq!(init["ssl.truststore.location"], certs(CA_FILE));
}

#[test]
fn every_node_serves_https_and_never_plain_http() {
    let c = compose();
    for name in orderlog_services(&c) {
        let svc = &c["services"][name.as_str()];
        let env = &svc["environment"];
        assert_eq!(
            env["ORDERLOG_TLS_CERT"].as_str(),
            Some(format!("{CERTS_DIR}/{CERT_FILE}").as_str()),
            "{name}: the chain up to the CA, which it also trusts when it forwards to another node"
        );
        assert_eq!(
            env["ORDERLOG_TLS_KEY"].as_str(),
            Some(format!("{CERTS_DIR}/{KEY_FILE}").as_str()),
            "{name}"
        );
        assert!(
            mounts(svc).contains(&format!("certs:{CERTS_DIR}:ro").as_str()),
            "{name} mounts the certificates read-only"
        );
        let mut all = Vec::new();
        strings(svc, &mut all);
        for s in all {
            assert!(
                !s.contains("insecure-http") && !s.contains("INSECURE_HTTP"),
                "{name} asks for plain HTTP: {s}"
            );
        }
        let listen: std::net::SocketAddr =
            env["ORDERLOG_LISTEN"].as_str().unwrap().parse().unwrap();
        assert!(
            orderlog::config::check_plain_http(listen, true, false).is_ok(),
            "{name} would be refused at start"
        );
        let check: Vec<&str> = svc["healthcheck"]["test"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            check.iter().any(|a| a.starts_with("https://"))
                && check.contains(&format!("{CERTS_DIR}/{CA_FILE}").as_str()),
            "{name}'s health check speaks HTTPS and checks the CA: {check:?}"
        );
    }
}

#[test]
fn every_node_reaches_kafka_over_sasl_ssl_with_scram_checking_the_ca() {
    let c = compose();
    let users = scram_users(&c);
    for name in orderlog_services(&c) {
        let env = c["services"][name.as_str()]["environment"]
            .as_mapping()
            .unwrap();
        let vars: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_owned(),
                    v.as_str().unwrap_or_default().to_owned(),
                )
            })
            .filter(|(k, _)| k.starts_with(KAFKA_SETTING_PREFIX))
            .collect();
        // The settings as orderlog reads them from its environment.
        let config = orderlog::config::Config::resolve_without_kek(
            &orderlog::config::Overrides::default(),
            &vars,
        )
        .unwrap();
        let kafka = &config.kafka;
        let setting = |k: &str| kafka.get(k).cloned().unwrap_or_default();
        assert_eq!(setting("security.protocol"), "SASL_SSL", "{name}");
        assert_eq!(setting("sasl.mechanism"), "SCRAM-SHA-512", "{name}");
        assert_eq!(
            setting("ssl.ca.location"),
            format!("{CERTS_DIR}/{CA_FILE}"),
            "{name} checks the broker's certificate against the CA"
        );
        assert_eq!(setting("sasl.username"), "orderlog", "{name}");
        assert_eq!(
            Some(required_var(
                &setting("sasl.password"),
                &format!("{name}'s sasl.password")
            )),
            users.get("orderlog").map(String::as_str),
            "{name} logs in with the password its SCRAM user was made with"
        );
        // librdkafka knows every setting and takes its value.
        let settings = orderlog::kafka::KafkaSettings {
            brokers: env[&Value::from("ORDERLOG_BROKERS")]
                .as_str()
                .unwrap()
                .to_owned(),
            extra: config.kafka.clone(),
        };
        let _native = settings
            .client_config()
            .create_native_config()
            .unwrap_or_else(|e| panic!("{name}: librdkafka refuses its settings: {e}"));
    }
}

#[test]
fn only_orderlog_touches_the_key_topic_and_auditors_only_read_the_log() {
    let c = compose();
    let events = c["services"]["orderlog"]["environment"]["ORDERLOG_TOPIC"]
        .as_str()
        .unwrap();
    let keys = keys_topic_for(events);
    let log = [
        events.to_owned(),
        orderlog::kafka::members_topic_for(events),
        format!(
            "{events}{}",
            orderlog::projections::projector::DEAD_LETTER_SUFFIX
        ),
    ];
    let grants = grants(&c);
    for g in &grants {
        assert!(
            g.principal == "User:orderlog" || g.principal == "User:auditor",
            "nobody else gets anything: {}",
            g.line
        );
        if g.principal != "User:orderlog" {
            assert!(
                !g.reaches_topic(&keys) && !g.line.contains(keys.as_str()),
                "only orderlog touches {keys}: {}",
                g.line
            );
        }
    }
    let to_orderlog: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.principal == "User:orderlog")
        .collect();
    let to_auditor: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.principal == "User:auditor")
        .collect();

    // orderlog: everything on its topics (the key topic among them), groups
    // and transactional ids, and on the cluster what its transactional
    // producers and topic creation need.
    for topic in log.iter().chain([&keys]) {
        assert!(
            to_orderlog
                .iter()
                .any(|g| g.reaches_topic(topic) && g.operations_are(&["All"])),
            "orderlog gets All on {topic}"
        );
    }
    let group = orderlog::kafka::writers_group(events);
    let transactional_id = orderlog::kafka::transactional_id(events, 0);
    assert!(
        to_orderlog.iter().any(|g| g.operations_are(&["All"])
            && g.groups.iter().any(|x| x == "*" || *x == group)),
        "orderlog gets All on its groups, {group} among them"
    );
    assert!(
        to_orderlog.iter().any(|g| g.operations_are(&["All"])
            && g.transactional_ids
                .iter()
                .any(|x| x == "*" || *x == transactional_id)),
        "orderlog gets All on its transactional ids, {transactional_id} among them"
    );
    assert!(
        to_orderlog
            .iter()
            .any(|g| g.cluster
                && g.operations_are(&["IdempotentWrite", "Create", "DescribeConfigs"])),
        "orderlog gets on the cluster what its producers and topic creation need"
    );

    // auditor: reads the log, with any group, and nothing else.
    for topic in &log {
        assert!(
            to_auditor
                .iter()
                .any(|g| g.reaches_topic(topic) && g.operations_are(&["Read", "Describe"])),
            "auditor reads {topic}"
        );
    }
    assert!(
        to_auditor
            .iter()
            .any(|g| g.operations_are(&["Read"]) && g.groups == ["*"])
    );
    for g in &to_auditor {
        assert!(
            !g.cluster && g.transactional_ids.is_empty() && !g.prefixed,
            "auditor gets only reads of named topics and groups: {}",
            g.line
        );
        assert!(
            g.operations.iter().all(|o| o == "Read" || o == "Describe"),
            "auditor only reads: {}",
            g.line
        );
        for t in &g.topics {
            assert!(log.contains(t), "auditor gets {t}, which is not the log");
        }
    }
}

#[test]
fn passwords_are_required_from_the_host_and_never_written_in_the_file() {
    let c = compose();
    let mut all = Vec::new();
    strings(&c, &mut all);
    // A secret Compose substitutes is required: no default to fall back on.
    let secret = |name: &str| {
        ["PASSWORD", "TOKEN", "SECRET", "KEK"]
            .iter()
            .any(|w| name.contains(w))
    };
    let substituted: Vec<(String, String)> = all.iter().flat_map(|s| interpolations(s)).collect();
    for (name, rest) in &substituted {
        if secret(name.as_str()) {
            assert!(
                rest.starts_with(":?"),
                "${{{name}{rest}}} must be required, with no default"
            );
        }
    }
    // Every environment entry holding a password takes it from the host.
    let mut from_host = BTreeSet::new();
    for (svc, def) in c["services"].as_mapping().unwrap() {
        let svc = svc.as_str().unwrap();
        for (k, v) in def["environment"].as_mapping().into_iter().flatten() {
            let k = k.as_str().unwrap();
            if k.contains("PASSWORD") {
                let var = required_var(
                    v.as_str()
                        .unwrap_or_else(|| panic!("{svc}: {k} is not a string")),
                    &format!("{svc}: {k}"),
                );
                assert!(var.contains("PASSWORD"), "{svc}: {k} comes from {var}");
                from_host.insert(var);
            }
        }
    }
    assert_eq!(
        from_host,
        BTreeSet::from([
            "KAFKA_ADMIN_PASSWORD",
            "KAFKA_AUDITOR_PASSWORD",
            "KAFKA_ORDERLOG_PASSWORD",
        ])
    );
    // orderlog would read ORDERLOG_KAFKA_PASSWORD, exported for a command run
    // on the host, as the librdkafka setting `password`.
    assert!(
        from_host
            .iter()
            .all(|v| !v.starts_with(KAFKA_SETTING_PREFIX))
    );
    // Scripts write passwords into properties and --add-scram lists only
    // from variables.
    for s in &all {
        for (i, _) in s.match_indices("password=") {
            let value = s[i + "password=".len()..].trim_start_matches('"');
            assert!(
                value.starts_with("$$"),
                "docker-compose.yml writes a password itself after {:?}",
                s[..i].lines().last().unwrap_or_default()
            );
        }
    }
}

#[test]
fn each_daemon_reads_its_own_copy_of_the_tls_key_and_nobody_writes_the_certificates() {
    let c = compose();
    let certs = &c["services"]["certs"];
    let script = script(&c, "certs");
    let make = script
        .lines()
        .find(|l| l.contains("orderlog tls-certs"))
        .expect("the certs service runs `orderlog tls-certs`");
    let words: Vec<&str> = make.split_whitespace().collect();
    assert_eq!(flag_values(&words, "--out"), [CERTS_DIR]);
    let hosts: BTreeSet<String> = flag_values(&words, "--host").into_iter().collect();
    for name in orderlog_services(&c)
        .into_iter()
        .chain(["kafka".to_owned(), "localhost".to_owned()])
    {
        assert!(
            hosts.contains(&name),
            "the certificate names {name}: {hosts:?}"
        );
    }
    // tls-certs writes the keys 0600, owned by the user it runs as: as root,
    // it can hand each daemon its own copy.
    assert_eq!(certs["user"].as_str(), Some("0:0"));
    assert!(
        mounts(certs).contains(&format!("certs:{CERTS_DIR}").as_str()),
        "the certs service writes the volume"
    );
    let owner = |file: &str| -> String {
        let path = format!("{CERTS_DIR}/{file}");
        script
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<&str>>())
            .find(|w| w.first() == Some(&"chown") && w.last() == Some(&path.as_str()))
            .and_then(|w| w.get(1).map(|o| o.to_string()))
            .unwrap_or_else(|| panic!("the certs service gives {path} to its reader"))
    };
    assert_eq!(
        owner(KEY_FILE),
        dockerfile_number("--uid"),
        "orderlog's key"
    );
    assert_eq!(owner(KEYSTORE_FILE), KAFKA_IMAGE_UID, "Kafka's keystore");
    assert!(
        c["services"]["kafka"].get("user").is_none(),
        "kafka runs as the image's user, {KAFKA_IMAGE_UID}"
    );
    assert!(
        script.lines().any(|l| {
            l.trim_start().starts_with("chmod 0600")
                && l.contains(&format!("{CERTS_DIR}/{KEY_FILE}"))
                && l.contains(&format!("{CERTS_DIR}/{KEYSTORE_FILE}"))
        }),
        "the keys stay readable by their owner only"
    );
    // Everyone else only reads them.
    for (name, svc) in c["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        for m in mounts(svc) {
            if m.starts_with("certs:") && name != "certs" {
                assert!(m.ends_with(":ro"), "{name} mounts {m} writable");
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
