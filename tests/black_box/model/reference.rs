//! The reference model: what the documents say an order is after each
//! command, and what a request must be answered. It never calls the
//! service's domain code, and sends nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::steps::Class;

/// The personal data an order was placed with, to compare reads against.
#[derive(Debug, Clone)]
pub(super) struct Secrets {
    pub(super) name: String,
    pub(super) street: String,
    pub(super) mobile: String,
    pub(super) landline: Option<String>,
    pub(super) email: Option<String>,
    pub(super) id_number: Option<String>,
}

impl Secrets {
    /// The plaintext values of one class, for "must not appear" checks.
    pub(super) fn of(&self, class: Class) -> Vec<&str> {
        match class {
            Class::Shipping => vec![&self.name, &self.street, &self.mobile],
            Class::Contact => self
                .landline
                .iter()
                .chain(&self.email)
                .map(|s| s.as_str())
                .collect(),
            Class::Identity => self.id_number.iter().map(|s| s.as_str()).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct ModelOrder {
    pub(super) id: String,
    pub(super) version: u64,
    pub(super) real_name: bool,
    pub(super) secrets: Secrets,
    pub(super) cancel_reason: Option<&'static str>,
    /// Field classes whose data is shredded.
    pub(super) erased: BTreeSet<Class>,
    /// The whole order is erased (its key destroyed).
    pub(super) fully_erased: bool,
    /// Party (kind, id) -> classes shared with it.
    pub(super) shares: BTreeMap<(String, String), BTreeSet<Class>>,
}

impl ModelOrder {
    pub(super) fn holds(&self, class: Class) -> bool {
        match class {
            Class::Shipping => true,
            Class::Contact => self.secrets.landline.is_some() || self.secrets.email.is_some(),
            Class::Identity => self.real_name,
        }
    }

    pub(super) fn status(&self) -> &'static str {
        if self.fully_erased {
            "erased"
        } else if self.cancel_reason.is_some() {
            "cancelled"
        } else {
            "active"
        }
    }

    /// Classes whose fields the order endpoint must show.
    pub(super) fn readable(&self) -> BTreeSet<Class> {
        Class::ALL
            .into_iter()
            .filter(|c| self.holds(*c) && !self.fully_erased && !self.erased.contains(c))
            .collect()
    }

    /// Classes a party's view must show: shared with it and not erased.
    pub(super) fn readable_by(&self, kind: &str, id: &str) -> BTreeSet<Class> {
        let shared = self
            .shares
            .get(&(kind.to_owned(), id.to_owned()))
            .cloned()
            .unwrap_or_default();
        shared.intersection(&self.readable()).copied().collect()
    }
}

/// A request sent with an Idempotency-Key, and what it answered first.
#[derive(Debug, Clone)]
pub(super) struct Keyed {
    pub(super) path: String,
    pub(super) body: Value,
    pub(super) status: u16,
    pub(super) order_id: String,
    pub(super) version: u64,
}

#[derive(Debug, Default)]
pub(super) struct Model {
    pub(super) orders: Vec<ModelOrder>,
    /// Idempotency-Key -> the request that first succeeded with it. Keys
    /// belong to the caller (checkout), not to a route.
    pub(super) keys: BTreeMap<String, Keyed>,
    pub(super) placed: u32,
}

/// What the model predicts for one request.
#[derive(Debug)]
pub(super) enum Expect {
    /// Carried out: this status, and this version answered.
    Written { status: u16, version: u64 },
    /// Refused with one of these (status, code); several when more than one
    /// documented rule applies and the documents do not rank them.
    Refused(Vec<(u16, &'static str)>),
}

pub(super) fn refused_or(errs: Vec<(u16, &'static str)>, written: Expect) -> Expect {
    if errs.is_empty() {
        written
    } else {
        Expect::Refused(errs)
    }
}
