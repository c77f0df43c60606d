//! Unit tests of the pure checks, on logs built in memory. The [`Fixture`]
//! is shared with the other audit commands' tests.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::*;
use crate::crypto::{KeyId, OrderKey, Shredded};
use crate::domain::validation::{MerchantId, ProviderId};
use crate::domain::{
    self, CancelReason, Command, ErasureScope, Event, FieldClass, Party, State, fixtures,
};
use crate::events::{EventMeta, RecordHash};

/// Builds a one-partition log of sealed events, as the service would.
pub(crate) struct Fixture {
    /// (record key, record value), offset = index.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    pub keys: BTreeMap<Uuid, OrderKey>,
    heads: BTreeMap<Uuid, (u64, RecordHash)>,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            records: Vec::new(),
            keys: BTreeMap::new(),
            heads: BTreeMap::new(),
        }
    }

    /// Seals and encodes `event` as event `seq` of `order` naming `prev`.
    pub fn encode(&self, order: Uuid, seq: u64, prev: RecordHash, event: &Event) -> Vec<u8> {
        let key = self.keys.get(&order);
        let meta = EventMeta {
            event_id: Uuid::now_v7(),
            order_id: order,
            sequence: seq,
            occurred_at_ms: 1_760_000_000_000 + seq as i64,
            key_id: key.map_or(KeyId([0; 16]), OrderKey::id),
            prev_hash: prev,
        };
        events::encode(
            &events::seal_event(event, meta, key).unwrap(),
            &events::codec::test_keys(),
        )
    }

    /// Appends the next event of `order`; returns its offset.
    pub fn append(&mut self, order: Uuid, event: Event) -> i64 {
        let (seq, prev) = self.heads.get(&order).copied().unwrap_or_default();
        let bytes = self.encode(order, seq + 1, prev, &event);
        self.heads
            .insert(order, (seq + 1, events::record_hash(&bytes)));
        self.push(order, bytes)
    }

    pub fn push(&mut self, order: Uuid, bytes: Vec<u8>) -> i64 {
        self.records.push((order.as_bytes().to_vec(), bytes));
        self.records.len() as i64 - 1
    }

    pub fn head(&self, order: Uuid) -> (u64, RecordHash) {
        self.heads[&order]
    }

    pub fn place(&mut self, n: u32) -> Uuid {
        let order = Uuid::now_v7();
        self.keys.insert(order, OrderKey::generate());
        let events = domain::decide(
            &State::default(),
            Command::PlaceOrder(fixtures::new_order(n, true)),
        )
        .unwrap();
        for e in events {
            self.append(order, e);
        }
        order
    }

    pub fn share_logistics(&mut self, order: Uuid, provider: &str) -> i64 {
        self.append(
            order,
            Event::OrderShared {
                party: Party::Logistics(ProviderId::parse("p", provider).unwrap()),
                classes: BTreeSet::from([FieldClass::Shipping]),
            },
        )
    }

    pub fn share_merchant(&mut self, order: Uuid) -> i64 {
        self.append(
            order,
            Event::OrderShared {
                party: Party::Merchant(MerchantId::parse("m", "m-1").unwrap()),
                classes: BTreeSet::from([FieldClass::Shipping, FieldClass::Contact]),
            },
        )
    }

    pub fn cancel(&mut self, order: Uuid) -> i64 {
        self.append(
            order,
            Event::OrderCancelled {
                reason: CancelReason::CustomerRequest,
            },
        )
    }

    pub fn erase(&mut self, order: Uuid, scope: ErasureScope) -> i64 {
        self.append(
            order,
            Event::OrderErased {
                scope,
                reason: crate::domain::ErasureReason::Request,
            },
        )
    }

    pub fn check(&self) -> ChainChecker {
        let mut c = ChainChecker::new(1, Some(std::sync::Arc::new(events::codec::test_keys())));
        for (off, (key, value)) in self.records.iter().enumerate() {
            c.observe(0, off as i64, Some(key), value);
        }
        c
    }

    /// The vault as it should be: keys of erased classes gone.
    pub fn lookup(&self, checker: &ChainChecker, order: Uuid) -> KeyLookup {
        let erased = &checker.orders[&order].erased;
        let Some(key) = self.keys.get(&order) else {
            return KeyLookup::Missing;
        };
        if erased.len() == FieldClass::ALL.len() {
            return KeyLookup::Shredded(Shredded {
                key_id: key.id(),
                classes: erased.clone(),
                whole: true,
                at_ms: 0,
            });
        }
        KeyLookup::Live(copy_without(key, erased))
    }
}

fn copy_without(key: &OrderKey, gone: &BTreeSet<FieldClass>) -> OrderKey {
    let subkeys = FieldClass::ALL
        .into_iter()
        .filter(|c| !gone.contains(c))
        .filter_map(|c| key.subkey(c).map(|k| (c, k.clone())))
        .collect();
    OrderKey::from_parts(key.id(), subkeys)
}

fn kinds(f: &[Finding]) -> Vec<(FindingKind, Option<i64>)> {
    f.iter().map(|f| (f.kind, f.offset)).collect()
}

fn scenario() -> (Fixture, Uuid, Uuid, Uuid) {
    let mut f = Fixture::new();
    let a = f.place(1);
    let b = f.place(2);
    let c = f.place(3);
    f.share_logistics(a, "sf-express");
    f.share_merchant(b);
    f.cancel(c);
    f.erase(c, ErasureScope::Order);
    f.erase(
        b,
        ErasureScope::Classes(BTreeSet::from([FieldClass::Identity])),
    );
    (f, a, b, c)
}

#[test]
fn a_clean_log_and_a_vault_that_matches_it_give_no_findings() {
    let (f, _, b, c) = scenario();
    let checker = f.check();
    assert_eq!(checker.findings, vec![]);
    assert_eq!(checker.records, f.records.len() as u64);
    assert_eq!(checker.orders.len(), 3);
    assert!(checker.orders[&c].erased.len() == 3);
    assert_eq!(
        checker.orders[&b].erased,
        BTreeSet::from([FieldClass::Identity])
    );
    let findings = check_keys(&checker.orders, |o| f.lookup(&checker, o));
    assert_eq!(findings, vec![]);
}

#[test]
fn a_withheld_event_is_a_gap_at_the_next_record() {
    let (mut f, a, _, _) = scenario();
    let (seq, prev) = f.head(a);
    // Event seq+1 is withheld; seq+2 arrives naming some hash.
    let bytes = f.encode(
        a,
        seq + 2,
        prev,
        &Event::OrderCancelled {
            reason: CancelReason::Other,
        },
    );
    let at = f.push(a, bytes);
    let checker = f.check();
    assert_eq!(
        kinds(&checker.findings),
        vec![(FindingKind::SequenceGap, Some(at))]
    );
    let finding = &checker.findings[0];
    assert_eq!(finding.order_id, Some(a));
    assert!(
        finding
            .detail
            .contains(&format!("event {} is missing", seq + 1)),
        "{}",
        finding.detail
    );
}

#[test]
fn a_wrong_prev_hash_breaks_the_chain_and_the_record_is_not_taken_in() {
    let (mut f, a, _, _) = scenario();
    let (seq, _) = f.head(a);
    let bad = f.encode(
        a,
        seq + 1,
        [7; 32],
        &Event::OrderCancelled {
            reason: CancelReason::Other,
        },
    );
    let at = f.push(a, bad);
    // The real next event still continues the chain.
    let next = f.cancel(a);
    let checker = f.check();
    assert_eq!(
        kinds(&checker.findings),
        vec![(FindingKind::BrokenChain, Some(at))]
    );
    assert!(checker.findings[0].detail.contains("0707070707070707"));
    assert_eq!(checker.orders[&a].records[&(seq + 1)].1, next);
}

#[test]
fn a_copy_is_a_duplicate_another_record_a_conflict_and_a_flipped_byte_a_forgery() {
    let (mut f, a, _, _) = scenario();
    let placed = f.records[0].1.clone();
    let dup = f.push(a, placed.clone());
    // Another authentic record under a taken sequence number (a writer's
    // bug, or a zombie writer).
    let other = f.encode(
        a,
        1,
        [0; 32],
        &Event::OrderCancelled {
            reason: CancelReason::Other,
        },
    );
    let conflict = f.push(a, other);
    let mut flipped = placed;
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01; // inside the log MAC: still decodes, no longer authentic
    let forged = f.push(a, flipped);
    let mut broken = f.records[0].1.clone();
    broken[0] ^= 0xff; // the magic bytes: no longer an envelope
    let undecodable = f.push(a, broken);
    let checker = f.check();
    assert_eq!(
        kinds(&checker.findings),
        vec![
            (FindingKind::DuplicateRecord, Some(dup)),
            (FindingKind::ConflictingRecord, Some(conflict)),
            (FindingKind::Forged, Some(forged)),
            (FindingKind::Undecodable, Some(undecodable)),
        ]
    );
    assert!(checker.findings.iter().all(|x| x.order_id == Some(a)));
    assert!(checker.findings[1].detail.contains("offset 0"));
}

#[test]
fn a_chained_record_without_the_log_key_is_forged_and_not_taken_in() {
    let (mut f, a, _, _) = scenario();
    let (seq, prev) = f.head(a);
    // Well formed and correctly chained, as anyone able to produce could
    // write it: a share to a party of the forger's choice, MAC'd under a
    // key of their own.
    let key = f.keys.get(&a).map(OrderKey::id).unwrap();
    let meta = EventMeta {
        event_id: Uuid::now_v7(),
        order_id: a,
        sequence: seq + 1,
        occurred_at_ms: 1_760_000_000_999,
        key_id: key,
        prev_hash: prev,
    };
    let share = Event::OrderShared {
        party: Party::Logistics(ProviderId::parse("party.id", "forger-express").unwrap()),
        classes: BTreeSet::from([FieldClass::Shipping, FieldClass::Identity]),
    };
    let env = events::seal_event(&share, meta, None).unwrap();
    let own = crate::crypto::LogKeys::from_ring(&crate::crypto::KekRing::new(
        crate::crypto::Kek::generate(),
    ));
    let at = f.push(a, events::encode(&env, &own));
    let unauthenticated = f.push(a, events::encode_v1(&env));
    // The real next event still continues the chain.
    let next = f.cancel(a);
    let checker = f.check();
    assert_eq!(
        kinds(&checker.findings),
        vec![
            (FindingKind::Forged, Some(at)),
            (FindingKind::Forged, Some(unauthenticated)),
        ]
    );
    assert!(checker.findings[0].detail.contains("does not hold"));
    assert!(checker.findings[1].detail.contains("schema v1"));
    assert_eq!(checker.orders[&a].records[&(seq + 1)].1, next);
}

#[test]
fn a_record_under_another_orders_key_is_refused() {
    let (mut f, a, b, _) = scenario();
    let (seq, prev) = f.head(a);
    let bytes = f.encode(
        a,
        seq + 1,
        prev,
        &Event::OrderCancelled {
            reason: CancelReason::Other,
        },
    );
    f.records.push((b.as_bytes().to_vec(), bytes));
    let checker = f.check();
    assert_eq!(checker.findings.len(), 1);
    assert_eq!(checker.findings[0].kind, FindingKind::KeyMismatch);
    assert_eq!(checker.findings[0].order_id, Some(a));
}

#[test]
fn the_vault_must_agree_with_the_erasures_in_the_log() {
    let (f, a, b, c) = scenario();
    let checker = f.check();
    let full = |o: Uuid| copy_without(&f.keys[&o], &BTreeSet::new());
    let findings = check_keys(&checker.orders, |o| {
        if o == a {
            KeyLookup::Missing // lost, never erased
        } else if o == b {
            KeyLookup::Live(full(b)) // identity erased in the log, still in the vault
        } else {
            KeyLookup::Live(full(c)) // whole order erased, key alive
        }
    });
    let got: Vec<(FindingKind, Uuid)> = findings
        .iter()
        .map(|x| (x.kind, x.order_id.unwrap()))
        .collect();
    let mut want = vec![
        (FindingKind::KeyLost, a),
        (FindingKind::ErasureNotApplied, b),
        (FindingKind::ErasureNotApplied, c),
    ];
    want.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want);

    // Shredded in the vault with no OrderErased in the log.
    let findings = check_keys(&checker.orders, |o| {
        if o == a {
            KeyLookup::Shredded(Shredded {
                key_id: f.keys[&a].id(),
                classes: FieldClass::ALL.into_iter().collect(),
                whole: true,
                at_ms: 1,
            })
        } else {
            f.lookup(&checker, o)
        }
    });
    assert_eq!(
        kinds(&findings),
        vec![(FindingKind::ShreddedWithoutErasure, Some(0))]
    );

    // A key that does not open the sealed fields (another order's key).
    let findings = check_keys(&checker.orders, |o| {
        if o == a {
            KeyLookup::Live(OrderKey::generate())
        } else {
            f.lookup(&checker, o)
        }
    });
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].kind, FindingKind::SealedFieldUnreadable);
}

#[test]
fn views_are_compared_only_at_the_same_offsets() {
    let digest = |rows: u64, d: &str| ViewDigest {
        per_view: BTreeMap::from([("view_orders", (rows, d.to_owned()))]),
        total: d.to_owned(),
    };
    let offsets = BTreeMap::from([(0u32, 10u64), (1, 5)]);
    assert_eq!(
        compare_views(&digest(3, "aa"), &offsets, &digest(3, "aa"), &offsets),
        vec![]
    );
    let f = compare_views(&digest(3, "aa"), &offsets, &digest(4, "bb"), &offsets);
    assert_eq!(kinds(&f), vec![(FindingKind::ViewDigestMismatch, None)]);
    assert!(f[0].detail.contains("3 rows") && f[0].detail.contains("4 rows"));
    let behind = BTreeMap::from([(0u32, 10u64), (1, 4)]);
    let f = compare_views(&digest(3, "aa"), &behind, &digest(4, "bb"), &offsets);
    assert_eq!(kinds(&f), vec![(FindingKind::ViewsBehind, Some(4))]);
    assert_eq!(f[0].partition, Some(1));
}

#[test]
fn findings_never_show_personal_fields() {
    let (mut f, a, _, _) = scenario();
    let mut flipped = f.records[0].1.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    f.push(a, flipped);
    let checker = f.check();
    let text: String = checker.findings.iter().map(|x| x.to_string()).collect();
    assert!(!text.is_empty());
    for needle in ["张三丰1", "zhang.sanfeng1", "13800000001"] {
        assert!(!text.contains(needle), "{text}");
    }
}

#[test]
fn a_node_a_moment_behind_the_replay_is_waited_for_within_the_limit() {
    let target = BTreeMap::from([(0u32, 10u64), (1, 5)]);
    // Behind twice, then at the target: the third snapshot is compared.
    let mut seen = vec![
        BTreeMap::from([(0u32, 10u64), (1, 5)]),
        BTreeMap::from([(0u32, 9u64), (1, 5)]),
        BTreeMap::from([(0u32, 8u64)]),
    ];
    let mut taken = 0;
    let (n, offsets) = catch_up(&target, Duration::from_secs(5), Duration::ZERO, || {
        taken += 1;
        Ok::<_, ()>((taken, seen.pop().unwrap()))
    })
    .unwrap();
    assert_eq!((n, offsets), (3, target.clone()));
    // Never there: the last snapshot once the limit has passed.
    let started = std::time::Instant::now();
    let (_, offsets) = catch_up(
        &target,
        Duration::from_millis(50),
        Duration::from_millis(10),
        || Ok::<_, ()>(((), BTreeMap::from([(0u32, 1u64)]))),
    )
    .unwrap();
    assert_eq!(offsets, BTreeMap::from([(0u32, 1u64)]));
    assert!(started.elapsed() >= Duration::from_millis(50));
}
