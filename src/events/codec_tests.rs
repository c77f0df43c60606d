use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::domain::{Command, State, decide, fixtures};

fn placed(n: u32, real_name: bool) -> Event {
    decide(
        &State::default(),
        Command::PlaceOrder(fixtures::new_order(n, real_name)),
    )
    .unwrap()
    .remove(0)
}

fn meta(key: &OrderKey, sequence: u64) -> EventMeta {
    EventMeta {
        event_id: Uuid::now_v7(),
        order_id: Uuid::now_v7(),
        sequence,
        occurred_at_ms: 1_733_000_000_000,
        key_id: key.id(),
        prev_hash: [7; 32],
    }
}

#[test]
fn a_placed_order_round_trips_through_seal_encode_decode_open() {
    let key = OrderKey::generate();
    let event = placed(1, true);
    let env = seal_event(&event, meta(&key, 1), Some(&key)).unwrap();
    let bytes = encode(&env, &test_keys());
    let back = decode(&bytes).unwrap();
    assert_eq!(back, env);
    assert_eq!(open_event(&back, Some(&key)).unwrap(), event);
}

/// Opening gives back what was sealed, even a value today's rules refuse
/// (as one sealed under an earlier, looser rule would be): the tag, not a
/// second validation, vouches for it.
#[test]
fn opening_returns_what_was_sealed_without_validating_it_again() {
    use crate::domain::validation::Mobile;
    let key = OrderKey::generate();
    let mut event = placed(2, false);
    let Event::OrderPlaced(p) = &mut event else {
        unreachable!()
    };
    let mut shipping = p.personal.shipping.as_ref().unwrap().expose().clone();
    assert!(Mobile::parse("consignee.mobile", "0123").is_err());
    shipping.mobile = Mobile::from_sealed("0123");
    p.personal.shipping = Some(crate::domain::Personal::new(shipping));
    let env = seal_event(&event, meta(&key, 1), Some(&key)).unwrap();
    let back = decode(&encode(&env, &test_keys())).unwrap();
    assert_eq!(open_event(&back, Some(&key)).unwrap(), event);
}

#[test]
fn the_encoded_record_holds_no_personal_plaintext() {
    let key = OrderKey::generate();
    let env = seal_event(&placed(99, true), meta(&key, 1), Some(&key)).unwrap();
    let bytes = encode(&env, &test_keys());
    let p = fixtures::personal(99, true, true);
    for needle in [
        p.shipping.name.as_str(),
        p.shipping.mobile.as_str(),
        p.shipping.address.street.as_str(),
        p.contact.email.as_ref().unwrap().as_str(),
        p.identity.as_ref().unwrap().as_str(),
        "13800000099",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "plaintext in record"
        );
    }
}

#[test]
fn without_a_key_only_public_fields_are_read() {
    let key = OrderKey::generate();
    let env = seal_event(&placed(1, false), meta(&key, 1), Some(&key)).unwrap();
    let Event::OrderPlaced(p) = open_event(&env, None).unwrap() else {
        panic!()
    };
    assert!(p.personal.is_empty());
    assert_eq!(p.order_number.as_str(), "ON-2026-00000001");
    assert_eq!(
        p.classes,
        BTreeSet::from([FieldClass::Shipping, FieldClass::Contact])
    );
}

#[test]
fn a_shredded_class_reads_as_absent_and_the_rest_opens() {
    let key = OrderKey::generate();
    let env = seal_event(&placed(1, true), meta(&key, 1), Some(&key)).unwrap();
    let key = key.without(FieldClass::Identity);
    let Event::OrderPlaced(p) = open_event(&env, Some(&key)).unwrap() else {
        panic!()
    };
    assert!(p.personal.identity.is_none());
    assert!(p.personal.shipping.is_some());
}

#[test]
fn another_orders_key_or_a_tampered_record_fails_to_open() {
    let key = OrderKey::generate();
    let env = seal_event(&placed(1, true), meta(&key, 1), Some(&key)).unwrap();
    assert!(matches!(
        open_event(&env, Some(&OrderKey::generate())),
        Err(OpenEventError::Open(OpenError::WrongKeyId { .. }))
    ));
    let mut moved = env.clone();
    moved.meta.order_id = Uuid::now_v7();
    assert!(matches!(
        open_event(&moved, Some(&key)),
        Err(OpenEventError::Open(OpenError::Unauthentic(_)))
    ));
    let mut swapped = env.clone();
    swapped.sealed[0].class = FieldClass::Contact;
    swapped.sealed[1].class = FieldClass::Shipping;
    assert!(matches!(
        open_event(&swapped, Some(&key)),
        Err(OpenEventError::Open(OpenError::Unauthentic(_)))
    ));
}

#[test]
fn the_decoder_names_what_is_wrong() {
    assert_eq!(decode(b"OL"), Err(DecodeError::TooShort(2)));
    assert_eq!(decode(b"XX\0\x01abc"), Err(DecodeError::BadMagic));
    assert_eq!(
        decode(b"OL\0\x09abc"),
        Err(DecodeError::UnsupportedVersion(9))
    );
    assert!(matches!(
        decode(b"OL\0\x01\xff\xff"),
        Err(DecodeError::Malformed { version: 1, .. })
    ));
    let key = OrderKey::generate();
    let mut bytes = encode(
        &seal_event(&placed(1, false), meta(&key, 1), Some(&key)).unwrap(),
        &test_keys(),
    );
    bytes.push(0);
    assert_eq!(decode(&bytes), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn a_record_authenticates_under_the_log_key_it_names_and_nothing_else() {
    let key = OrderKey::generate();
    let env = seal_event(&placed(3, true), meta(&key, 1), Some(&key)).unwrap();
    let keys = test_keys();
    let bytes = encode(&env, &keys);
    assert_eq!(bytes[..4], *b"OL\0\x03");
    assert_eq!(decode_authentic(&bytes, &keys, None).unwrap(), env);
    // Every flipped bit is refused: as a forgery, or as a record that no
    // longer decodes.
    for i in 0..bytes.len() {
        let mut t = bytes.clone();
        t[i] ^= 0x01;
        assert!(decode_authentic(&t, &keys, None).is_err(), "byte {i}");
    }
    // Another cluster's KEK: the log key is unknown here.
    let other = crate::crypto::LogKeys::from_ring(&crate::crypto::KekRing::new(
        crate::crypto::Kek::generate(),
    ));
    assert_eq!(
        authenticate(&bytes, &other, None),
        Err(DecodeError::Forged(Forged::UnknownKey(keys.current_id())))
    );
    // A record someone made with the right shape and a made-up tag.
    let mut forged = bytes[..bytes.len() - TAG_LEN].to_vec();
    forged.extend_from_slice(&[0; TAG_LEN]);
    assert_eq!(
        authenticate(&forged, &keys, None),
        Err(DecodeError::Forged(Forged::BadMac))
    );
    assert!(decode(&forged).is_ok(), "the shape alone is fine");
}

#[test]
fn a_v1_record_upcasts_but_is_authentic_only_where_v1_is_accepted() {
    let key = OrderKey::generate();
    let event = placed(4, true);
    let env = seal_event(&event, meta(&key, 1), Some(&key)).unwrap();
    let bytes = encode_v1(&env);
    assert_eq!(bytes[..4], *b"OL\0\x01");
    let back = decode(&bytes).unwrap();
    assert_eq!(back.schema_version, 1);
    assert_eq!((back.meta, &back.body), (env.meta, &env.body));
    assert_eq!(open_event(&back, Some(&key)).unwrap(), event);
    let keys = test_keys();
    assert_eq!(
        authenticate(&bytes, &keys, None),
        Err(DecodeError::Forged(Forged::Unauthenticated(1)))
    );
    assert!(decode_authentic(&bytes, &keys.accepting_v1(true), None).is_ok());
}

#[test]
fn non_personal_events_carry_no_sealed_fields() {
    let key = OrderKey::generate();
    for event in [
        Event::OrderCancelled {
            reason: CancelReason::Other,
        },
        Event::OrderErased {
            scope: ErasureScope::Order,
            reason: crate::domain::ErasureReason::Request,
        },
    ] {
        let env = seal_event(&event, meta(&key, 2), Some(&key)).unwrap();
        assert!(env.sealed.is_empty());
        assert_eq!(
            open_event(&decode(&encode(&env, &test_keys())).unwrap(), None).unwrap(),
            event
        );
    }
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decoding_a_mutated_record_never_panics(n in 0u32..1000, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let key = OrderKey::generate();
        let mut bytes = encode(&seal_event(&placed(n, n % 2 == 0), meta(&key, 1), Some(&key)).unwrap(), &test_keys());
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        if let Ok(env) = decode(&bytes) {
            let _ = open_event(&env, Some(&key));
        }
    }

    #[test]
    fn seal_encode_decode_open_round_trips(n in 0u32..100_000, real_name: bool, seq in 1u64..1_000_000, at in any::<i64>()) {
        let key = OrderKey::generate();
        let event = placed(n, real_name);
        let m = EventMeta { sequence: seq, occurred_at_ms: at, ..meta(&key, seq) };
        let env = seal_event(&event, m, Some(&key)).unwrap();
        let back = decode(&encode(&env, &test_keys())).unwrap();
        prop_assert_eq!(&back, &env);
        prop_assert_eq!(open_event(&back, Some(&key)).unwrap(), event);
    }
}

/// The borrowed writer gives the bytes of the wire record, derived encoder
/// and serde alike, for a placement with every class and for a public event.
#[test]
fn the_borrowed_v3_writer_gives_the_wire_records_bytes() {
    let key = OrderKey::generate();
    for event in [
        placed(3, true),
        Event::OrderCancelled {
            reason: crate::domain::CancelReason::OutOfStock,
        },
    ] {
        let env = seal_event(&event, meta(&key, 2), Some(&key)).unwrap();
        let borrowed = bincode::encode_to_vec(WireV3(&env), bincode_config()).unwrap();
        let derived = bincode::encode_to_vec(wire(&env), bincode_config()).unwrap();
        let serde = bincode::serde::encode_to_vec(wire(&env), bincode_config()).unwrap();
        assert_eq!(borrowed, derived);
        assert_eq!(borrowed, serde);
    }
}
