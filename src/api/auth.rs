//! Bearer-token authentication and roles.
//!
//! Tokens are kept only as SHA-256 digests, looked up by digest, and never
//! logged; a request's identity is its [`Role`], and access logs name the
//! token by the name it was configured with (`token=role@name`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::access::Secret;
pub use crate::access::{Role, TokenEntry};
use crate::domain::validation::{MerchantId, ProviderId};

/// The name a forwarded call's caller goes by: the forwarding node vouches
/// for the role only.
pub const FORWARDED_NAME: &str = "(forwarded)";

/// Token digests to roles and names.
#[derive(Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], (Role, Arc<str>)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} configured)", self.by_digest.len())
    }
}

impl Tokens {
    pub fn new(entries: &[TokenEntry]) -> Self {
        Self {
            by_digest: entries
                .iter()
                .map(|(t, r, name)| {
                    (
                        Sha256::digest(t.expose().as_bytes()).into(),
                        (r.clone(), Arc::from(name.as_str())),
                    )
                })
                .collect(),
        }
    }

    /// The role of a presented token, if it is known.
    pub fn role(&self, token: &str) -> Option<&Role> {
        self.lookup(token).map(|(role, _)| role)
    }

    /// The role and name of a presented token, if it is known.
    pub fn lookup(&self, token: &str) -> Option<(&Role, &Arc<str>)> {
        self.by_digest
            .get(&<[u8; 32]>::from(Sha256::digest(token.as_bytes())))
            .map(|(role, name)| (role, name))
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// Fresh random tokens, one per role (each named after its role), for the
/// embedded demo mode.
pub fn demo_tokens() -> Vec<TokenEntry> {
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
            let name = r.to_string();
            let prefix = name.split(':').next().unwrap_or("tok").to_owned();
            (Secret::new(format!("{prefix}-{}", hex::encode(b))), r, name)
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
    fn tokens_map_to_roles_and_names_and_unknown_tokens_to_nothing() {
        let t = Tokens::new(&[(
            Secret::new("0123456789abcdef-checkout"),
            Role::Checkout,
            "shop-frontend".to_owned(),
        )]);
        assert_eq!(t.role("0123456789abcdef-checkout"), Some(&Role::Checkout));
        let (role, name) = t.lookup("0123456789abcdef-checkout").unwrap();
        assert_eq!((role, name.as_ref()), (&Role::Checkout, "shop-frontend"));
        assert_eq!(t.role("0123456789abcdef-checkouT"), None);
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }
}

/// The authenticated caller of a request.
/// Who is calling: the role of a bearer token and the token's name (for
/// access logs), or the role a forwarding node vouches for (then
/// `forwarded` is set, the name is [`FORWARDED_NAME`], and the command is
/// never forwarded again).
#[derive(Debug, Clone)]
pub struct Caller(pub Role, pub Forwarded, pub Arc<str>);

/// Whether a request came from another node, carrying its caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded(pub bool);

impl Caller {
    /// The name of the caller's token, as configured: what access logs say
    /// in place of the token.
    pub fn token_name(&self) -> &str {
        &self.2
    }

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
            return Ok(Caller(role, Forwarded(true), Arc::from(FORWARDED_NAME)));
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
            .lookup(token)
            .map(|(role, name)| Caller(role.clone(), Forwarded(false), name.clone()))
            .ok_or_else(|| unauthenticated("unknown bearer token"))
    }
}
