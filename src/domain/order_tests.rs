//! Given/when/then tests of every rule in `decide`, plus property tests that
//! random command sequences keep the state machine's invariants.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::fixtures;
use super::order::*;
use super::validation::{Currency, MerchantId, OrderNumber, ProviderId};

fn placed(real_name: bool) -> Event {
    decide(
        &State::default(),
        Command::PlaceOrder(fixtures::new_order(1, real_name)),
    )
    .unwrap()
    .remove(0)
}

fn given(events: &[Event]) -> State {
    fold(events)
}

fn logistics(id: &str) -> Party {
    Party::Logistics(ProviderId::parse("party.id", id).unwrap())
}

fn merchant(id: &str) -> Party {
    Party::Merchant(MerchantId::parse("party.id", id).unwrap())
}

fn classes(c: &[FieldClass]) -> BTreeSet<FieldClass> {
    c.iter().copied().collect()
}

fn share(party: Party, c: &[FieldClass]) -> Command {
    Command::ShareOrder {
        party,
        classes: classes(c),
    }
}

fn cancelled() -> Event {
    Event::OrderCancelled {
        reason: CancelReason::CustomerRequest,
    }
}

fn erased() -> Event {
    Event::OrderErased {
        scope: ErasureScope::Order,
        reason: crate::domain::ErasureReason::Request,
    }
}

use FieldClass::{Contact, Identity, Shipping};

fn hold(until_ms: Option<i64>) -> Hold {
    Hold {
        reason: super::validation::HoldReason::parse("reason", "dispute 2026-117").unwrap(),
        until_ms,
    }
}

#[test]
fn a_held_order_refuses_erasure_naming_the_hold_until_it_is_released() {
    let state = given(&[placed(true), Event::OrderHeld(hold(None))]);
    let refused = decide_at(&state, Command::erase(ErasureScope::Order), 5_000).unwrap_err();
    assert_eq!(refused, DomainError::LegalHold(hold(None)));
    assert!(
        refused.to_string().contains("dispute 2026-117"),
        "{refused}"
    );
    // Classes too, and for retention as for a request.
    let retention = Command::EraseOrder {
        scope: ErasureScope::Classes(classes(&[Identity])),
        reason: ErasureReason::Retention,
    };
    assert!(matches!(
        decide_at(&state, retention.clone(), 5_000),
        Err(DomainError::LegalHold(_))
    ));
    // Cancelling is not erasing: allowed while held.
    assert!(
        decide_at(
            &state,
            Command::CancelOrder {
                reason: CancelReason::Other
            },
            5_000
        )
        .is_ok()
    );
    assert_eq!(
        decide_at(&state, Command::ReleaseHold, 5_000),
        Ok(vec![Event::OrderHoldReleased])
    );
    let released = given(&[
        placed(true),
        Event::OrderHeld(hold(None)),
        Event::OrderHoldReleased,
    ]);
    assert_eq!(
        decide_at(&released, retention, 5_000),
        Ok(vec![Event::OrderErased {
            scope: ErasureScope::Classes(classes(&[Identity])),
            reason: ErasureReason::Retention,
        }])
    );
}

#[test]
fn a_hold_with_an_end_holds_until_then_and_no_longer() {
    let state = given(&[placed(false), Event::OrderHeld(hold(Some(10_000)))]);
    assert!(decide_at(&state, Command::erase(ErasureScope::Order), 9_999).is_err());
    assert!(decide_at(&state, Command::erase(ErasureScope::Order), 10_000).is_ok());
    // An ended hold cannot be released, and at an unknown time it counts.
    assert_eq!(
        decide_at(&state, Command::ReleaseHold, 10_000),
        Err(DomainError::NotHeld)
    );
    assert!(decide(&state, Command::erase(ErasureScope::Order)).is_err());
}

#[test]
fn holds_are_refused_on_erased_orders_and_a_release_needs_a_hold() {
    let state = given(&[placed(false), erased()]);
    assert_eq!(
        decide(&state, Command::HoldOrder(hold(None))),
        Err(DomainError::HoldOfErased)
    );
    let state = given(&[placed(false)]);
    assert_eq!(
        decide(&state, Command::ReleaseHold),
        Err(DomainError::NotHeld)
    );
    // The same hold again changes nothing; another replaces it.
    let held = given(&[placed(false), Event::OrderHeld(hold(None))]);
    assert_eq!(decide(&held, Command::HoldOrder(hold(None))), Ok(vec![]));
    assert_eq!(
        decide(&held, Command::HoldOrder(hold(Some(7)))),
        Ok(vec![Event::OrderHeld(hold(Some(7)))])
    );
}

#[test]
fn a_hold_reason_is_refused_when_it_looks_like_personal_data() {
    use super::validation::HoldReason;
    for fine in [
        "court order, case 2026-11-30/17",
        "legal case 20261130001",
        "dispute #2024-117, filed 2026-11-30",
    ] {
        assert!(HoldReason::parse("reason", fine).is_ok(), "{fine}");
    }
    for bad in [
        "",
        "call 138 0013 8000",
        "call 138-0013-8000",
        "office 0755-12345678",
        "abroad +44 7700 900123",
        "li.na@example.com",
        "id 11010519491231002X",
        "a\nb",
    ] {
        let e = HoldReason::parse("reason", bad).unwrap_err();
        assert_eq!(e.field, "reason", "{bad:?}");
    }
    assert!(HoldReason::parse("reason", &"x".repeat(201)).is_err());
}

#[test]
fn placing_a_new_order_records_its_public_facts_and_classes() {
    let events = decide(
        &given(&[]),
        Command::PlaceOrder(fixtures::new_order(7, true)),
    )
    .unwrap();
    let [Event::OrderPlaced(p)] = events.as_slice() else {
        panic!("expected one OrderPlaced, got {events:?}");
    };
    assert_eq!(p.order_number.as_str(), "ON-2026-00000007");
    assert_eq!(p.classes, classes(&[Shipping, Contact, Identity]));
    assert!(p.personal.identity.is_some());
    let state = given(&events);
    assert_eq!(state.version, 1);
    assert_eq!(state.order.unwrap().status(), Status::Active);
}

#[test]
fn placing_twice_is_refused() {
    let err = decide(
        &given(&[placed(false)]),
        Command::PlaceOrder(fixtures::new_order(1, false)),
    );
    assert_eq!(err, Err(DomainError::AlreadyPlaced));
}

#[test]
fn commands_on_an_unknown_order_are_refused_as_not_found() {
    for cmd in [
        share(logistics("sf"), &[Shipping]),
        Command::CancelOrder {
            reason: CancelReason::Other,
        },
        Command::EraseOrder {
            scope: ErasureScope::Order,
            reason: crate::domain::ErasureReason::Request,
        },
    ] {
        assert_eq!(decide(&given(&[]), cmd), Err(DomainError::NotFound));
    }
}

#[test]
fn sharing_with_a_logistics_provider_records_the_classes() {
    let events = decide(
        &given(&[placed(false)]),
        share(logistics("sf-express"), &[Shipping]),
    )
    .unwrap();
    assert_eq!(
        events,
        vec![Event::OrderShared {
            party: logistics("sf-express"),
            classes: classes(&[Shipping])
        }]
    );
    let mut all = vec![placed(false)];
    all.extend(events);
    let s = given(&all);
    assert_eq!(
        s.order.unwrap().shares[&logistics("sf-express")],
        classes(&[Shipping])
    );
}

#[test]
fn sharing_only_records_classes_not_already_shared_and_a_repeat_is_a_no_op() {
    let history = [
        placed(false),
        Event::OrderShared {
            party: logistics("sf"),
            classes: classes(&[Shipping]),
        },
    ];
    assert_eq!(
        decide(&given(&history), share(logistics("sf"), &[Shipping])),
        Ok(vec![])
    );
    assert_eq!(
        decide(
            &given(&history),
            share(logistics("sf"), &[Shipping, Contact])
        ),
        Ok(vec![Event::OrderShared {
            party: logistics("sf"),
            classes: classes(&[Contact])
        }])
    );
}

#[test]
fn a_share_needs_at_least_one_class() {
    assert_eq!(
        decide(&given(&[placed(false)]), share(logistics("sf"), &[])),
        Err(DomainError::NoFieldClasses)
    );
}

#[test]
fn a_cancelled_order_cannot_be_shared() {
    assert_eq!(
        decide(
            &given(&[placed(false), cancelled()]),
            share(logistics("sf"), &[Shipping])
        ),
        Err(DomainError::ShareOfCancelled)
    );
}

#[test]
fn an_erased_order_cannot_be_shared() {
    assert_eq!(
        decide(
            &given(&[placed(false), erased()]),
            share(logistics("sf"), &[Shipping])
        ),
        Err(DomainError::ShareOfErased)
    );
}

#[test]
fn an_erased_class_cannot_be_shared_but_the_others_can() {
    let history = [
        placed(true),
        Event::OrderErased {
            scope: ErasureScope::Classes(classes(&[Identity])),
            reason: crate::domain::ErasureReason::Request,
        },
    ];
    assert_eq!(
        decide(
            &given(&history),
            share(logistics("sf"), &[Shipping, Identity])
        ),
        Err(DomainError::ShareOfErasedClass(Identity))
    );
    assert!(decide(&given(&history), share(logistics("sf"), &[Shipping])).is_ok());
}

#[test]
fn a_merchant_share_goes_only_to_the_orders_own_merchant() {
    let own = decide(
        &given(&[placed(false)]),
        share(merchant("m-1"), &[Shipping]),
    );
    assert!(own.is_ok());
    let foreign = decide(
        &given(&[placed(false)]),
        share(merchant("m-2"), &[Shipping]),
    );
    assert_eq!(
        foreign,
        Err(DomainError::ForeignMerchant {
            own: MerchantId::parse("m", "m-1").unwrap()
        })
    );
}

#[test]
fn the_identity_class_is_only_for_real_name_orders() {
    assert_eq!(
        decide(
            &given(&[placed(false)]),
            share(logistics("sf"), &[Identity])
        ),
        Err(DomainError::IdentityNotApplicable)
    );
    assert!(decide(&given(&[placed(true)]), share(logistics("sf"), &[Identity])).is_ok());
}

#[test]
fn the_contact_class_needs_contact_fields() {
    let mut order = fixtures::new_order(3, false);
    let mut data = order.personal.expose().clone();
    data.contact = ContactInfo::default();
    order = NewOrder::new(
        order.order_number.clone(),
        order.merchant_id.clone(),
        order.items.clone(),
        order.amount.currency,
        order.amount.minor as i64,
        data,
    )
    .unwrap();
    let history = decide(&State::default(), Command::PlaceOrder(order)).unwrap();
    assert_eq!(
        decide(&given(&history), share(logistics("sf"), &[Contact])),
        Err(DomainError::NoContactFields)
    );
}

#[test]
fn cancel_happens_once() {
    let events = decide(
        &given(&[placed(false)]),
        Command::CancelOrder {
            reason: CancelReason::OutOfStock,
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![Event::OrderCancelled {
            reason: CancelReason::OutOfStock
        }]
    );
    assert_eq!(
        decide(
            &given(&[placed(false), cancelled()]),
            Command::CancelOrder {
                reason: CancelReason::Other
            }
        ),
        Err(DomainError::AlreadyCancelled)
    );
}

#[test]
fn an_erased_order_cannot_be_cancelled() {
    assert_eq!(
        decide(
            &given(&[placed(false), erased()]),
            Command::CancelOrder {
                reason: CancelReason::Other
            }
        ),
        Err(DomainError::CancelOfErased)
    );
}

#[test]
fn erase_happens_once_also_after_a_cancel() {
    let after_cancel = given(&[placed(false), cancelled()]);
    assert_eq!(
        decide(
            &after_cancel,
            Command::EraseOrder {
                scope: ErasureScope::Order,
                reason: crate::domain::ErasureReason::Request,
            }
        ),
        Ok(vec![erased()])
    );
    assert_eq!(
        decide(
            &given(&[placed(false), cancelled(), erased()]),
            Command::EraseOrder {
                scope: ErasureScope::Order,
                reason: crate::domain::ErasureReason::Request,
            }
        ),
        Err(DomainError::AlreadyErased)
    );
}

#[test]
fn cancelling_is_not_erasing() {
    let s = given(&[placed(false), cancelled()]);
    let o = s.order.unwrap();
    assert_eq!(o.status(), Status::Cancelled);
    assert!(o.erased.is_empty());
}

#[test]
fn a_class_erasure_keeps_the_order_active_and_repeating_it_is_refused() {
    let class_erase = Event::OrderErased {
        scope: ErasureScope::Classes(classes(&[Identity])),
        reason: crate::domain::ErasureReason::Request,
    };
    let s = given(&[placed(true), class_erase.clone()]);
    let o = s.order.as_ref().unwrap();
    assert_eq!(o.status(), Status::Active);
    assert_eq!(o.erased, classes(&[Identity]));
    assert_eq!(
        decide(
            &s,
            Command::EraseOrder {
                scope: ErasureScope::Classes(classes(&[Identity])),
                reason: crate::domain::ErasureReason::Request,
            }
        ),
        Err(DomainError::AlreadyErased)
    );
    assert_eq!(
        decide(
            &s,
            Command::EraseOrder {
                scope: ErasureScope::Classes(classes(&[])),
                reason: crate::domain::ErasureReason::Request,
            }
        ),
        Err(DomainError::NoClassesToErase)
    );
    // A whole-order erasure after a class erasure is still allowed.
    assert_eq!(
        decide(
            &s,
            Command::EraseOrder {
                scope: ErasureScope::Order,
                reason: crate::domain::ErasureReason::Request,
            }
        ),
        Ok(vec![erased()])
    );
}

#[test]
fn new_order_requires_amount_to_equal_the_lines() {
    let o = fixtures::new_order(1, false);
    let err = NewOrder::new(
        o.order_number.clone(),
        o.merchant_id.clone(),
        o.items.clone(),
        Currency::parse("currency", "CNY").unwrap(),
        o.amount.minor as i64 + 1,
        o.personal.expose().clone(),
    )
    .unwrap_err();
    assert_eq!(err.field, "amount");
}

#[test]
fn new_order_requires_an_id_number_exactly_for_real_name_goods() {
    let real = fixtures::new_order(1, true);
    let mut no_id = real.personal.expose().clone();
    no_id.identity = None;
    let err = NewOrder::new(
        real.order_number.clone(),
        real.merchant_id.clone(),
        real.items.clone(),
        real.amount.currency,
        real.amount.minor as i64,
        no_id,
    )
    .unwrap_err();
    assert_eq!(err.field, "id_number");
    assert!(err.problem.contains("required"));

    let plain = fixtures::new_order(1, false);
    let with_id = fixtures::personal(1, true, true);
    let err = NewOrder::new(
        plain.order_number.clone(),
        plain.merchant_id.clone(),
        plain.items.clone(),
        plain.amount.currency,
        plain.amount.minor as i64,
        with_id,
    )
    .unwrap_err();
    assert_eq!(err.field, "id_number");
}

#[test]
fn new_order_needs_items() {
    let o = fixtures::new_order(1, false);
    let err = NewOrder::new(
        OrderNumber::parse("order_number", "ON-1").unwrap(),
        o.merchant_id.clone(),
        vec![],
        o.amount.currency,
        0,
        o.personal.expose().clone(),
    )
    .unwrap_err();
    assert_eq!(err.field, "items");
}

fn arb_command() -> impl Strategy<Value = Command> {
    let class = prop_oneof![Just(Shipping), Just(Contact), Just(Identity)];
    let classes = proptest::collection::btree_set(class, 0..=3);
    let party = prop_oneof![
        Just(logistics("sf")),
        Just(logistics("jd")),
        Just(merchant("m-1")),
        Just(merchant("m-2")),
    ];
    prop_oneof![
        (any::<u32>(), any::<bool>())
            .prop_map(|(n, r)| Command::PlaceOrder(fixtures::new_order(n % 1000, r))),
        (party, classes.clone())
            .prop_map(|(party, classes)| Command::ShareOrder { party, classes }),
        proptest::sample::select(CancelReason::ALL.to_vec())
            .prop_map(|reason| Command::CancelOrder { reason }),
        Just(Command::EraseOrder {
            scope: ErasureScope::Order,
            reason: crate::domain::ErasureReason::Request,
        }),
        classes.prop_map(|c| Command::EraseOrder {
            scope: ErasureScope::Classes(c),
            reason: crate::domain::ErasureReason::Request,
        }),
    ]
}

proptest! {
    /// Whatever commands arrive, the state never reaches an invalid shape.
    #[test]
    fn random_command_sequences_keep_the_invariants(cmds in proptest::collection::vec(arb_command(), 0..40)) {
        let mut state = State::default();
        let mut log: Vec<Event> = Vec::new();
        for cmd in cmds {
            let before = state.clone();
            match decide(&state, cmd) {
                Ok(events) => {
                    for e in &events {
                        state = apply(state, e);
                    }
                    log.extend(events);
                }
                Err(_) => prop_assert_eq!(&state, &before, "a refusal changes nothing"),
            }
            prop_assert_eq!(state.version as usize, log.len());
            if let Some(o) = &state.order {
                // Shares never name the identity class of a non-real-name order,
                // never go to a foreign merchant, and never name an empty set.
                for (party, cls) in &o.shares {
                    prop_assert!(!cls.is_empty());
                    prop_assert!(o.real_name || !cls.contains(&Identity));
                    if let Party::Merchant(m) = party {
                        prop_assert_eq!(m, &o.merchant_id);
                    }
                }
                if o.fully_erased {
                    prop_assert_eq!(&o.erased, &classes(&[Shipping, Contact, Identity]));
                }
                // Exactly one OrderPlaced, and it is the first event.
                prop_assert!(matches!(log[0], Event::OrderPlaced(_)));
                prop_assert_eq!(log.iter().filter(|e| matches!(e, Event::OrderPlaced(_))).count(), 1);
                let cancels = log.iter().filter(|e| matches!(e, Event::OrderCancelled { .. })).count();
                prop_assert!(cancels <= 1);
                let erasures = log.iter().filter(|e| matches!(e, Event::OrderErased { scope: ErasureScope::Order, .. })).count();
                prop_assert!(erasures <= 1);
            } else {
                prop_assert!(log.is_empty());
            }
            // Replaying the log gives the same state: apply is the only truth.
            prop_assert_eq!(&fold(&log), &state);
        }
    }
}

/// The names strum derives are the names serde writes (the API and the
/// CLI print one, the log and JSON bodies carry the other).
#[test]
fn enum_names_are_the_same_in_text_and_in_json() {
    for class in FieldClass::ALL {
        let json = serde_json::to_value(class).unwrap();
        assert_eq!(json, class.as_str(), "{class:?}");
        assert_eq!(FieldClass::parse(class.as_str()), Some(class));
    }
    assert_eq!(FieldClass::parse("Shipping"), None);
    for reason in CancelReason::ALL {
        let json = serde_json::to_value(reason).unwrap();
        assert_eq!(json, reason.as_str(), "{reason:?}");
        assert_eq!(CancelReason::parse(reason.as_str()), Some(reason));
    }
    assert_eq!(CancelReason::parse("customer request"), None);
    for reason in [ErasureReason::Request, ErasureReason::Retention] {
        assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
    }
    for status in [Status::Active, Status::Cancelled, Status::Erased] {
        assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
    }
}
