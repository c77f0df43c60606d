//! Bearer-token authentication and roles.
//!
//! Tokens are kept only as SHA-256 digests, looked up by digest, and never
//! logged; a request's identity is its [`Role`].

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::domain::validation::{MerchantId, ProviderId};

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

/// Token digests to roles.
#[derive(Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Role>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} configured)", self.by_digest.len())
    }
}

impl Tokens {
    pub fn new(entries: &[(Secret, Role)]) -> Self {
        Self {
            by_digest: entries
                .iter()
                .map(|(t, r)| (Sha256::digest(t.expose().as_bytes()).into(), r.clone()))
                .collect(),
        }
    }

    /// The role of a presented token, if it is known.
    pub fn role(&self, token: &str) -> Option<&Role> {
        self.by_digest
            .get(&<[u8; 32]>::from(Sha256::digest(token.as_bytes())))
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// Fresh random tokens, one per role, for the embedded demo mode.
pub fn demo_tokens() -> Vec<(Secret, Role)> {
    use rand::RngCore;
    let roles = [
        Role::Checkout,
        Role::Logistics(ProviderId::parse("role", "sf-express").expect("valid id")),
        Role::Merchant(MerchantId::parse("role", "m-1").expect("valid id")),
        Role::Privacy,
        Role::Auditor,
    ];
    roles
        .into_iter()
        .map(|r| {
            let mut b = [0u8; 18];
            rand::rngs::OsRng.fill_bytes(&mut b);
            let prefix = r.to_string().split(':').next().unwrap_or("tok").to_owned();
            (Secret::new(format!("{prefix}-{}", hex::encode(b))), r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print_back() {
        for s in [
            "checkout",
            "privacy",
            "auditor",
            "logistics:sf-express",
            "merchant:m-1",
        ] {
            assert_eq!(Role::parse(s).unwrap().to_string(), s);
        }
        assert!(Role::parse("admin").unwrap_err().contains("unknown role"));
        assert!(Role::parse("logistics:").is_err());
        assert!(Role::parse("boss:x").is_err());
    }

    #[test]
    fn tokens_map_to_roles_and_unknown_tokens_to_nothing() {
        let t = Tokens::new(&[(Secret::new("0123456789abcdef-checkout"), Role::Checkout)]);
        assert_eq!(t.role("0123456789abcdef-checkout"), Some(&Role::Checkout));
        assert_eq!(t.role("0123456789abcdef-checkouT"), None);
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }
}

/// The authenticated caller of a request.
/// Who is calling: the role of a bearer token, or the role a forwarding node
/// vouches for (then `forwarded` is set, and the command is never forwarded
/// again).
#[derive(Debug, Clone)]
pub struct Caller(pub Role, pub Forwarded);

/// Whether a request came from another node, carrying its caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded(pub bool);

impl Caller {
    /// 403 unless the caller has one of `allowed`.
    pub fn require(&self, allowed: &[Role]) -> Result<(), super::error::ApiError> {
        if allowed.contains(&self.0) {
            return Ok(());
        }
        let names: Vec<String> = allowed.iter().map(Role::to_string).collect();
        Err(super::error::ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this endpoint needs role {}; the token has role {}",
                names.join(" or "),
                self.0
            ),
        ))
    }
}

impl axum::extract::FromRequestParts<super::AppState> for Caller {
    type Rejection = super::error::ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &super::AppState,
    ) -> Result<Self, Self::Rejection> {
        use axum::http::StatusCode;
        if let Some(role) =
            state
                .forwarder
                .verify(&parts.headers, &parts.method, parts.uri.path())?
        {
            return Ok(Caller(role, Forwarded(true)));
        }
        let unauthenticated =
            |m: &str| super::error::ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated("missing Authorization: Bearer <token> header"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| unauthenticated("Authorization header must be 'Bearer <token>'"))?;
        state
            .tokens
            .role(token)
            .cloned()
            .map(|r| Caller(r, Forwarded(false)))
            .ok_or_else(|| unauthenticated("unknown bearer token"))
    }
}
