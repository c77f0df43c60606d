//! The README's main job: `orderlog serve` with no brokers runs on the
//! embedded mock cluster, prints one token per role, serves the documented
//! flow over a real socket, and shuts down cleanly on SIGTERM. And it
//! refuses plain HTTP on an address other hosts can reach unless told.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

#[tokio::test]
async fn embedded_serve_runs_the_documented_flow_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderlog"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("ORDERLOG_BROKERS")
        .env_remove("ORDERLOG_TOKENS")
        .env("ORDERLOG_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let err_log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());

    let mut tokens = std::collections::HashMap::new();
    let base = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("serve prints its address");
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(addr) = line.strip_prefix("orderlog listening on ") {
            break addr.trim().to_owned();
        }
        if words.len() == 2 {
            tokens.insert(words[0].to_owned(), words[1].to_owned());
        }
    };
    for role in [
        "checkout",
        "logistics:sf-express",
        "merchant:m-1",
        "privacy",
        "auditor",
    ] {
        assert!(
            tokens.contains_key(role),
            "a token for {role} was printed: {tokens:?}"
        );
    }
    let client = reqwest::Client::new();
    let order = json!({
        "order_number": "ON-2026-0001", "merchant_id": "m-1", "currency": "CNY", "amount": 17600,
        "items": [{"sku": "TEA-250", "name": "Longjing tea", "quantity": 2, "unit_price": 8800}],
        "consignee": {"name": "张三", "mobile": "13800138000",
            "address": {"province": "广东省", "city": "深圳市", "district": "南山区", "street": "科技园路 1 号", "postal_code": "518057"}},
    });
    let placed: Value = client
        .post(format!("{base}/v1/orders"))
        .bearer_auth(&tokens["checkout"])
        .json(&order)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = placed["order_id"].as_str().expect("placed").to_owned();
    let shared: Value = client
        .post(format!("{base}/v1/orders/{id}/shares"))
        .bearer_auth(&tokens["checkout"])
        .json(&json!({"party": {"kind": "logistics", "id": "sf-express"}, "fields": ["shipping"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shared["version"], 2);
    // 404 until the view shows the share (the projector runs beside the
    // writer), then the order as of version 2.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let view: Value = loop {
        let r = client
            .get(format!(
                "{base}/v1/shipping/sf-express/orders/{id}?min_version=2"
            ))
            .bearer_auth(&tokens["logistics:sf-express"])
            .send()
            .await
            .unwrap();
        if r.status() != 404 || std::time::Instant::now() >= deadline {
            break r.json().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(view["consignee"]["mobile_masked"], "138****8000", "{view}");
    // An auditor sees the personal fields only by asking, and the reveal is
    // logged with the token's name (a demo token is named after its role).
    for (query, name) in [("", Value::Null), ("?reveal=true", json!("张三"))] {
        let order: Value = client
            .get(format!("{base}/v1/orders/{id}{query}"))
            .bearer_auth(&tokens["auditor"])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(order["personal"]["consignee"]["name"], name, "{order}");
    }
    let r = client
        .post(format!("{base}/v1/orders/{id}/cancel"))
        .bearer_auth(&tokens["checkout"])
        .json(&json!({"reason": "customer_request"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let receipt: Value = client
        .post(format!("{base}/v1/orders/{id}/erase"))
        .bearer_auth(&tokens["privacy"])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(receipt["receipt"]["scope"], "order", "{receipt}");
    let after: Value = client
        .get(format!("{base}/v1/orders/{id}"))
        .bearer_auth(&tokens["checkout"])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after["personal"], Value::Null);

    // SIGTERM: the process drains and exits 0 within the shutdown limit.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "serve did not stop within 25 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    let log = err_log.join().unwrap();
    // Not a terminal: structured JSON log lines, fields first.
    let json_lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
        .collect();
    assert!(
        json_lines
            .iter()
            .any(|l| l["message"] == "orderlog serving."
                && l["level"] == "INFO"
                && l["addr"].is_string()),
        "{log}"
    );
    assert!(
        json_lines
            .iter()
            .any(|l| l["message"] == "Order erased." && l["order_id"] == id.as_str()),
        "{log}"
    );
    let reveals: Vec<&Value> = json_lines
        .iter()
        .filter(|l| l["message"] == "Personal fields revealed for audit.")
        .collect();
    assert_eq!(reveals.len(), 1, "{log}");
    assert_eq!(
        (
            reveals[0]["order_id"].as_str(),
            reveals[0]["token_name"].as_str()
        ),
        (Some(id.as_str()), Some("auditor")),
        "{log}"
    );
    assert!(
        log.contains("EMBEDDED"),
        "it says it runs on the embedded broker"
    );
    assert!(log.contains("nothing is kept across restarts"));
    for token in tokens.values() {
        assert!(
            !log.contains(token.as_str()),
            "a token appeared in the logs"
        );
    }
    for secret in ["张三", "13800138000", "科技园路"] {
        assert!(!log.contains(secret), "personal data in the logs");
    }
}

/// Plain HTTP on an address other hosts can reach is refused at start,
/// naming the address and both ways out; on loopback it is served as ever
/// (the test above).
#[test]
fn plain_http_on_a_public_address_is_refused_at_start_naming_both_fixes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderlog"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("ORDERLOG_BROKERS")
        .env_remove("ORDERLOG_CONFIG")
        .env_remove("ORDERLOG_TLS_CERT")
        .env_remove("ORDERLOG_TLS_KEY")
        .env_remove("ORDERLOG_INSECURE_HTTP")
        .env_remove("ORDERLOG_TOKENS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A serve that started would never exit: it is stopped, and the test fails.
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("serve started on 0.0.0.0 over plain HTTP");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "serve started on 0.0.0.0 over plain HTTP"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["0.0.0.0:0", "--tls-cert", "--insecure-http"] {
        assert!(stderr.contains(needle), "{needle} is not named: {stderr}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("listening"),
        "nothing is served, no token is printed: {stdout}"
    );
    assert!(!stdout.contains("Demo bearer tokens"), "{stdout}");
}
