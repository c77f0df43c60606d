//! The steps of a case and the strategy that draws them: the language the
//! model test speaks, with no knowledge of the service or the model.

use proptest::prelude::*;

use super::{PROVIDERS, REASONS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Class {
    Shipping,
    Contact,
    Identity,
}

impl Class {
    pub(super) const ALL: [Class; 3] = [Class::Shipping, Class::Contact, Class::Identity];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Class::Shipping => "shipping",
            Class::Contact => "contact",
            Class::Identity => "identity",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Contact {
    None,
    Email,
    Landline,
    Both,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// The n-th placed order (modulo how many there are; an unknown id while there are none).
    Placed(usize),
    /// A well-formed order id nobody placed.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum PartyPick {
    Logistics(&'static str),
    OwnMerchant,
    ForeignMerchant,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Reason {
    Valid(&'static str),
    Invalid,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum IfMatch {
    Current,
    Stale,
}

#[derive(Debug, Clone)]
pub(super) enum Step {
    Place {
        real_name: bool,
        contact: Contact,
        idempotency_key: Option<u8>,
    },
    /// Sends again a place or share that carried an Idempotency-Key (the
    /// n-th such key used so far, modulo), with the very same body or with
    /// another one.
    Retry {
        key: usize,
        same_body: bool,
    },
    /// With an Idempotency-Key the share goes without If-Match (which of the
    /// two is checked first is not documented).
    Share {
        target: Target,
        party: PartyPick,
        fields: Vec<Class>,
        if_match: Option<IfMatch>,
        idempotency_key: Option<u8>,
    },
    Cancel {
        target: Target,
        reason: Reason,
        if_match: Option<IfMatch>,
    },
    /// `fields: None` erases the whole order.
    Erase {
        target: Target,
        fields: Option<Vec<Class>>,
        if_match: Option<IfMatch>,
    },
    Get {
        target: Target,
    },
    Restart,
}

pub(super) fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    let target = prop_oneof![
        9 => (0usize..8).prop_map(Target::Placed),
        1 => Just(Target::Unknown),
    ];
    let classes = prop_oneof![
        1 => Just(Vec::new()),
        6 => proptest::sample::subsequence(Class::ALL.to_vec(), 1..=3),
    ];
    let if_match = prop_oneof![
        6 => Just(None),
        2 => Just(Some(IfMatch::Current)),
        2 => Just(Some(IfMatch::Stale)),
    ];
    let party = prop_oneof![
        4 => proptest::sample::select(PROVIDERS.to_vec()).prop_map(PartyPick::Logistics),
        2 => Just(PartyPick::OwnMerchant),
        1 => Just(PartyPick::ForeignMerchant),
    ];
    let reason = prop_oneof![
        5 => proptest::sample::select(REASONS.to_vec()).prop_map(Reason::Valid),
        1 => Just(Reason::Invalid),
    ];
    let contact = prop_oneof![
        Just(Contact::None),
        Just(Contact::Email),
        Just(Contact::Landline),
        Just(Contact::Both),
    ];
    let step = prop_oneof![
        5 => (any::<bool>(), contact, proptest::option::weighted(0.4, 0u8..3)).prop_map(
            |(real_name, contact, idempotency_key)| Step::Place { real_name, contact, idempotency_key }
        ),
        1 => (0usize..4, any::<bool>())
            .prop_map(|(key, same_body)| Step::Retry { key, same_body }),
        5 => (
            target.clone(),
            party,
            classes.clone(),
            if_match.clone(),
            proptest::option::weighted(0.3, 0u8..3),
        )
            .prop_map(|(target, party, fields, if_match, idempotency_key)| Step::Share {
                target,
                party,
                fields,
                if_match,
                idempotency_key,
            }),
        2 => (target.clone(), reason, if_match.clone())
            .prop_map(|(target, reason, if_match)| Step::Cancel { target, reason, if_match }),
        2 => (target.clone(), proptest::option::weighted(0.6, classes), if_match).prop_map(
            |(target, fields, if_match)| Step::Erase { target, fields, if_match }
        ),
        1 => target.prop_map(|target| Step::Get { target }),
        1 => Just(Step::Restart),
    ];
    proptest::collection::vec(step, 1..=max)
}
