//! Who may do what: roles, the bearer tokens that carry them, and the
//! [`Secret`] type every configured secret is held in. A leaf module: the
//! configuration and the HTTP layer both use it, and it uses neither.

use std::fmt;

use serde::Deserialize;

use crate::domain::validation::{MerchantId, ProviderId};

/// A secret string: never printed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    /// Zeroes the bytes before the memory is given back. (Not the `secrecy`
    /// crate's `SecretString`: the configuration keys a map by its tokens,
    /// which needs `Ord`.)
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// Places, shares and cancels orders.
    Checkout,
    /// Reads the orders shared with this provider.
    Logistics(ProviderId),
    /// Reads this merchant's orders.
    Merchant(MerchantId),
    /// Erases personal data.
    Privacy,
    /// Reads state and history.
    Auditor,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.split_once(':') {
            None => match s {
                "checkout" => Ok(Role::Checkout),
                "privacy" => Ok(Role::Privacy),
                "auditor" => Ok(Role::Auditor),
                other => Err(format!(
                    "unknown role '{other}': expected checkout, privacy, auditor, logistics:<provider> or merchant:<merchant>"
                )),
            },
            Some(("logistics", id)) => ProviderId::parse("role", id)
                .map(Role::Logistics)
                .map_err(|e| e.to_string()),
            Some(("merchant", id)) => MerchantId::parse("role", id)
                .map(Role::Merchant)
                .map_err(|e| e.to_string()),
            Some((other, _)) => Err(format!(
                "unknown role kind '{other}': expected logistics:<provider> or merchant:<merchant>"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Checkout => f.write_str("checkout"),
            Role::Logistics(p) => write!(f, "logistics:{p}"),
            Role::Merchant(m) => write!(f, "merchant:{m}"),
            Role::Privacy => f.write_str("privacy"),
            Role::Auditor => f.write_str("auditor"),
        }
    }
}

/// A configured bearer token: the token, its role, and its name, which
/// access logs show in its place (the role's name when none was given).
pub type TokenEntry = (Secret, Role, String);
