//! Seal+encode and decode+open of one realistic order event (about 250 bytes of
//! personal data), beside a baseline of encode/decode of the same event
//! without sealing, measured in the same run.
//!
//! Run: `cargo bench --profile dev --bench codec` (the dev profile builds
//! dependencies at -O3, so the AES and bincode code measured is optimised).
//! Under `cargo test` it runs a few iterations only, as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use orderlog::crypto::OrderKey;
use orderlog::domain::{Command, Event, State, decide, fixtures};
use orderlog::events::{self, EventMeta};
use uuid::Uuid;

fn measure(name: &str, iters: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters.min(1000) {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let per = start.elapsed() / iters;
    println!(
        "{name:<32} {:>9.2} us/event  {:>10.0} events/s",
        per.as_secs_f64() * 1e6,
        1.0 / per.as_secs_f64()
    );
    per
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let iters = if bench { 200_000 } else { 100 };
    let key = OrderKey::generate();
    let event = decide(
        &State::default(),
        Command::PlaceOrder(fixtures::new_order(12_345, true)),
    )
    .unwrap()
    .remove(0);
    let Event::OrderPlaced(p) = &event else {
        unreachable!()
    };
    let s = p.personal.shipping.as_ref().unwrap().expose();
    let c = p.personal.contact.as_ref().unwrap().expose();
    let personal_bytes = s.name.as_str().len()
        + s.address.province.len()
        + s.address.city.len()
        + s.address.district.len()
        + s.address.street.len()
        + s.address.postal_code.len()
        + s.mobile.as_str().len()
        + c.landline.as_ref().map_or(0, |l| l.as_str().len())
        + c.email.as_ref().map_or(0, |e| e.as_str().len())
        + p.personal
            .identity
            .as_ref()
            .map_or(0, |i| i.expose().as_str().len());
    let meta = EventMeta {
        event_id: Uuid::now_v7(),
        order_id: Uuid::now_v7(),
        sequence: 1,
        occurred_at_ms: 1_733_000_000_000,
        key_id: key.id(),
        prev_hash: [0; 32],
    };
    let env = events::seal_event(&event, meta, Some(&key)).unwrap();
    let log_keys = orderlog::crypto::LogKeys::from_ring(&orderlog::crypto::KekRing::new(
        orderlog::crypto::Kek::generate(),
    ));
    let bytes = events::encode(&env, &log_keys);
    let mut plain_env = env.clone();
    plain_env.sealed.clear();

    println!(
        "# codec benchmark: OrderPlaced with 3 field classes, {personal_bytes} bytes of personal data, record {} bytes",
        bytes.len()
    );
    println!(
        "# build: profile {}, target features aes={} sse4.1={}; {} iterations",
        if cfg!(debug_assertions) {
            "dev (deps -O3, orderlog -O2)"
        } else {
            "release"
        },
        cfg!(target_feature = "aes"),
        cfg!(target_feature = "sse4.1"),
        iters
    );
    let base_enc = measure("encode, no sealing (baseline)", iters, || {
        black_box(events::encode(black_box(&plain_env), &log_keys));
    });
    let seal_enc = measure("seal + encode", iters, || {
        let e = events::seal_event(black_box(&event), meta, Some(&key)).unwrap();
        black_box(events::encode(&e, &log_keys));
    });
    let plain_bytes = events::encode(&plain_env, &log_keys);
    let base_dec = measure("decode, no opening (baseline)", iters, || {
        black_box(events::decode_authentic(black_box(&plain_bytes), &log_keys, None).unwrap());
    });
    let dec_open = measure("decode + open", iters, || {
        let e = events::decode_authentic(black_box(&bytes), &log_keys, None).unwrap();
        black_box(events::open_event(&e, Some(&key)).unwrap());
    });
    println!(
        "# sealing costs {:.1}x plain encoding; opening costs {:.1}x plain decoding",
        seal_enc.as_secs_f64() / base_enc.as_secs_f64(),
        dec_open.as_secs_f64() / base_dec.as_secs_f64()
    );
}
