//! The event decoder on any bytes a topic could hold: it never panics; what
//! decodes re-encodes to an envelope that decodes the same; authentication
//! and opening with a key never panic either.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use orderlog::crypto::{Kek, KekRing, KeyId, LogKeys, OrderKey};
use orderlog::events;

/// Fixed keys, so a corpus entry made with them (tests/fuzz corpus) opens.
static LOG_KEYS: LazyLock<LogKeys> = LazyLock::new(|| {
    let kek = Kek::parse(&format!("orderlog-kek-v1:{}", "33".repeat(64))).unwrap();
    LogKeys::from_ring(&KekRing::new(kek))
});
static ORDER_KEY: LazyLock<OrderKey> =
    LazyLock::new(|| OrderKey::derive(KeyId([0x11; 16]), &[0x22; 32]));

fuzz_target!(|data: &[u8]| {
    let _ = events::authenticate(data, &LOG_KEYS, Some((0, 0)));
    let Ok(env) = events::decode(data) else {
        return;
    };
    let again =
        events::decode(&events::encode(&env, &LOG_KEYS)).expect("a re-encoded envelope decodes");
    assert_eq!(
        (again.meta, &again.body, &again.sealed),
        (env.meta, &env.body, &env.sealed)
    );
    let _ = events::public_event(&env);
    let _ = events::open_event(&env, Some(&ORDER_KEY));
    let _ = events::open_event(&env, None);
});
