//! The HTTP server's limits against slow and greedy clients, on a real
//! socket: 2,000 connections that trickle a request header one byte at a
//! time are closed once the header timeout passes, while `/healthz` answers
//! throughout; past `--http-max-connections`, a new connection is closed as
//! it arrives and the server takes new ones again once room is made.

use crate::common;

use std::time::{Duration, Instant};

use orderlog::api::server::Limits;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn start(limits: Limits) -> (orderlog::app::App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kek = orderlog::crypto::Kek::generate();
    let mut config = common::app::config(&common::unique("orders.limits"), dir.path(), &kek, 1);
    config.http = limits;
    (orderlog::app::App::start(&config).await.unwrap(), dir)
}

/// True once the server closed `s` (a read gives end of stream or an
/// error; the runtime's I/O driver learns of it in the background).
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match s.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false, // an answer (say a 408): the end follows
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_closed_within_the_timeout_while_healthz_answers() {
    const SLOW: usize = 2000;
    let timeout = Duration::from_secs(2);
    let (app, _dir) = start(Limits {
        header_read_timeout: timeout,
        ..Limits::default()
    })
    .await;
    let addr = app.addr;
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"G").await.unwrap();
        slow.push(s);
    }
    let opened = Instant::now();
    eprintln!("{SLOW} slow connections open");

    // /healthz from a fresh connection every 100 ms, throughout.
    let probe = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let mut answered = 0;
        while opened.elapsed() < timeout * 3 {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let t = Instant::now();
            let r = client
                .get(format!("http://{addr}/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            assert!(
                r.as_ref().is_ok_and(|r| r.status() == 200),
                "/healthz did not answer while slow clients held connections: {r:?}"
            );
            worst = worst.max(t.elapsed());
            answered += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (answered, worst)
    });

    // Trickle one more header byte on every open connection each second,
    // and count the ones the server has closed.
    let header = b"ET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";
    let mut open: Vec<TcpStream> = slow;
    let mut step = 0;
    let all_closed = loop {
        let mut still = Vec::with_capacity(open.len());
        for mut s in open {
            if closed(&mut s) {
                continue;
            }
            if s.write_all(&header[step % header.len()..][..1])
                .await
                .is_err()
            {
                continue;
            }
            still.push(s);
        }
        open = still;
        step += 1;
        if open.is_empty() {
            break opened.elapsed();
        }
        assert!(
            opened.elapsed() < timeout + Duration::from_secs(8),
            "{} of {SLOW} slow connections still open {:?} after opening (header timeout {timeout:?})",
            open.len(),
            opened.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    let (answered, worst) = probe.await.unwrap();
    eprintln!(
        "all {SLOW} slow connections closed {all_closed:?} after opening (header timeout {timeout:?}); /healthz answered {answered} times, slowest {worst:?}"
    );
    assert!(all_closed >= timeout, "closed before the timeout");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_a_new_connection_is_closed_and_room_is_made_again() {
    let (app, _dir) = start(Limits {
        header_read_timeout: Duration::from_secs(2),
        max_connections: 5,
        ..Limits::default()
    })
    .await;
    let addr = app.addr;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    while !closed(&mut extra) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            Instant::now() < deadline,
            "a sixth connection was kept past a limit of five"
        );
    }
    // The idle ones reach the header timeout and leave room.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in &mut idle {
        assert!(closed(s), "an idle connection outlived the header timeout");
    }
    let r = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}
