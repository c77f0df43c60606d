//! Any node takes any command: one for a partition another node writes is
//! forwarded to that node over HTTP, with the caller's `Idempotency-Key`,
//! `If-Match` and body, and its role, and the answer is relayed as it is.
//!
//! The role travels as a claim (`x-orderlog-forwarded-role`) signed with a
//! secret every node derives from the KEK (`x-orderlog-node-auth`: HMAC over
//! the claim, method, path, sending node, time, and a digest of the body,
//! `Idempotency-Key` and `If-Match`, which the receiving node checks against
//! the request as it arrives). A claim without a valid signature of the last
//! [`MAX_SKEW`] is refused, so a client cannot assert a role. A forwarded command is never forwarded again: if the receiving
//! node does not write the partition either (it moved meanwhile), the answer
//! is 503 `partition_moving`.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::auth::Role;
use super::error::ApiError;
use crate::service::membership::Member;

pub const HEADER_ROLE: &str = "x-orderlog-forwarded-role";
pub const HEADER_AUTH: &str = "x-orderlog-node-auth";
/// SHA-256 of what the command reads besides its path: its body, its
/// `Idempotency-Key` and `If-Match`. Signed, and checked against the request
/// as it arrived, so a captured forwarded call cannot carry another body.
pub const HEADER_DIGEST: &str = "x-orderlog-forwarded-digest";
/// How far apart two nodes' clocks and a forwarded request's age may be.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// Request headers a forwarded command keeps.
const KEPT_REQUEST: &[&str] = &[
    "content-type",
    "idempotency-key",
    "if-match",
    "x-request-id",
];
/// Answer headers relayed back.
const KEPT_RESPONSE: &[&str] = &[
    "content-type",
    "etag",
    "location",
    "idempotent-replayed",
    "retry-after",
];

/// Sends commands to other nodes and checks the ones they send.
pub struct Forwarder {
    client: reqwest::Client,
    secret: [u8; 32],
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

/// The digest a forwarded call is bound to (see [`HEADER_DIGEST`]).
pub fn request_digest(headers: &HeaderMap, body: &[u8]) -> String {
    use sha2::Digest;
    let mut h = Sha256::new();
    for name in ["idempotency-key", "if-match"] {
        let v = headers.get(name).map(|v| v.as_bytes()).unwrap_or_default();
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    h.update((body.len() as u64).to_be_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

fn signature(secret: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

impl Forwarder {
    /// `tls_cert`: the API's certificate (PEM), trusted for calls to other
    /// nodes when the cluster serves HTTPS.
    pub fn new(
        secret: [u8; 32],
        tls_cert: Option<&std::path::Path>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout + Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(5)); // below the receiving server's header timeout
        if let Some(path) = tls_cert {
            let pem = std::fs::read(path)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Self {
            client: builder.build()?,
            secret,
        })
    }

    #[allow(clippy::too_many_arguments)] // every part the signature covers
    fn sign(
        &self,
        node: &str,
        at_ms: i64,
        role: &str,
        method: &str,
        path: &str,
        digest: &str,
    ) -> String {
        let mac = signature(
            &self.secret,
            &[
                b"v1",
                node.as_bytes(),
                at_ms.to_string().as_bytes(),
                role.as_bytes(),
                method.as_bytes(),
                path.as_bytes(),
                digest.as_bytes(),
            ],
        );
        format!("v1.{node}.{at_ms}.{}", hex::encode(mac))
    }

    /// The role a forwarded request claims, if its signature holds; `None`
    /// when it claims none. A claim that does not verify is an error.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
    ) -> Result<Option<Role>, ApiError> {
        let Some(claim) = headers.get(HEADER_ROLE) else {
            return Ok(None);
        };
        let refused = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a forwarded role claim needs a valid node signature",
            )
        };
        let claim = claim.to_str().map_err(|_| refused())?;
        let auth = headers
            .get(HEADER_AUTH)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(refused)?;
        // `v1.<node>.<time>.<mac>`; a node id may itself hold dots.
        let rest = auth.strip_prefix("v1.").ok_or_else(refused)?;
        let mut it = rest.rsplitn(3, '.');
        let (Some(mac), Some(at), Some(node)) = (it.next(), it.next(), it.next()) else {
            return Err(refused());
        };
        let at_ms: i64 = at.parse().map_err(|_| refused())?;
        if (crate::clock::now_ms() - at_ms).unsigned_abs() > MAX_SKEW.as_millis() as u64 {
            return Err(refused());
        }
        let digest = headers
            .get(HEADER_DIGEST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(refused)?;
        let expected = self.sign(node, at_ms, claim, method.as_str(), path, digest);
        let given = mac.as_bytes();
        let want = expected.rsplit('.').next().unwrap_or_default().as_bytes();
        // Constant time: the MAC must not leak through timing.
        let same = given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(refused());
        }
        Role::parse(claim).map(Some).map_err(|_| refused())
    }

    /// For a forwarded call: the body and headers that arrived are the ones
    /// the sending node signed.
    pub fn check_digest(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
        let given = headers.get(HEADER_DIGEST).and_then(|h| h.to_str().ok());
        if given == Some(request_digest(headers, body).as_str()) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a forwarded call's body or headers do not match its node signature",
            ))
        }
    }

    /// Sends the command to `to` and relays its answer, or gives up at
    /// `deadline`. `Ok(None)`: the node could not be reached (nothing was
    /// sent), so the caller may look for the partition's writer again.
    #[allow(clippy::too_many_arguments)] // one request, as it came in
    pub async fn forward(
        &self,
        from_node: &str,
        to: &Member,
        role: &Role,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Response>, ApiError> {
        let role = role.to_string();
        let digest = request_digest(headers, &body);
        let auth = self.sign(
            from_node,
            crate::clock::now_ms(),
            &role,
            method.as_str(),
            path,
            &digest,
        );
        let url = format!("{}{path}", to.url.trim_end_matches('/'));
        let mut req = self
            .client
            .request(method.clone(), &url)
            .header(HEADER_ROLE, &role)
            .header(HEADER_AUTH, auth)
            .header(HEADER_DIGEST, &digest)
            .timeout(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .body(body);
        for name in KEPT_REQUEST {
            if let Some(v) = headers.get(*name) {
                req = req.header(*name, v.clone());
            }
        }
        metrics::counter!(crate::telemetry::FORWARDED).increment(1);
        let answer = match req.send().await {
            Ok(a) => a,
            Err(e) if e.is_connect() => {
                tracing::debug!(node = %to.node_id, url = %to.url, error = %e, "The partition's writer cannot be reached.");
                return Ok(None);
            }
            Err(e) => return Err(unknown(to, e)),
        };
        let status = answer.status();

        let mut kept = Vec::new();
        for name in KEPT_RESPONSE {
            if let Some(v) = answer.headers().get(*name) {
                kept.push((*name, v.clone()));
            }
        }
        let bytes = answer.bytes().await.map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                "the answer of the node that writes this order's partition was cut off; retry with \
                 the same Idempotency-Key to learn the outcome",
            )
        })?;
        let mut resp = (status, bytes).into_response();
        for (name, v) in kept {
            resp.headers_mut().insert(name, v);
        }
        resp.headers_mut()
            .insert("x-orderlog-served-by", header_value(&to.node_id));
        Ok(Some(resp))
    }
}

/// The command reached the writer (or may have), and no answer came.
fn unknown(to: &Member, e: reqwest::Error) -> ApiError {
    tracing::warn!(node = %to.node_id, url = %to.url, error = %e, "A forwarded command got no answer.");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "outcome_unknown",
        "the node that writes this order's partition did not answer in time; the command may or \
         may not have been written; retry with the same Idempotency-Key to learn its outcome",
    )
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder() -> Forwarder {
        Forwarder::new([7; 32], None, Duration::from_secs(1)).unwrap()
    }

    fn signed(f: &Forwarder, role: &str, method: &str, path: &str, at: i64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_ROLE, role.parse().unwrap());
        let digest = request_digest(&h, b"{}");
        h.insert(HEADER_DIGEST, digest.parse().unwrap());
        h.insert(
            HEADER_AUTH,
            f.sign("node.a-1", at, role, method, path, &digest)
                .parse()
                .unwrap(),
        );
        h
    }

    #[test]
    fn a_signed_claim_verifies_and_anything_else_is_refused() {
        let f = forwarder();
        let now = crate::clock::now_ms();
        let h = signed(&f, "privacy", "POST", "/v1/orders/x/erase", now);
        assert_eq!(
            f.verify(&h, &Method::POST, "/v1/orders/x/erase").unwrap(),
            Some(Role::Privacy)
        );
        // Another path, method, or a stale signature.
        assert!(f.verify(&h, &Method::POST, "/v1/orders/y/erase").is_err());
        assert!(f.verify(&h, &Method::GET, "/v1/orders/x/erase").is_err());
        let old = signed(&f, "privacy", "POST", "/p", now - 120_000);
        assert!(f.verify(&old, &Method::POST, "/p").is_err());
        // A claim without a signature, or signed with another secret.
        let mut bare = HeaderMap::new();
        bare.insert(HEADER_ROLE, "privacy".parse().unwrap());
        assert!(f.verify(&bare, &Method::POST, "/p").is_err());
        let other = Forwarder::new([8; 32], None, Duration::from_secs(1)).unwrap();
        let h = signed(&other, "privacy", "POST", "/p", now);
        assert!(f.verify(&h, &Method::POST, "/p").is_err());
        // A changed role claim under a valid signature.
        let mut h = signed(&f, "checkout", "POST", "/p", now);
        h.insert(HEADER_ROLE, "privacy".parse().unwrap());
        assert!(f.verify(&h, &Method::POST, "/p").is_err());
        // The body and headers that arrive are the ones signed.
        let h = signed(&f, "privacy", "POST", "/p", now);
        assert!(f.check_digest(&h, b"{}").is_ok());
        assert!(f.check_digest(&h, b"{\"fields\":[\"identity\"]}").is_err());
        let mut other_key = h.clone();
        other_key.insert("idempotency-key", "k2".parse().unwrap());
        assert!(f.check_digest(&other_key, b"{}").is_err());
        // A changed digest breaks the signature itself.
        let mut h2 = h.clone();
        h2.insert(
            HEADER_DIGEST,
            request_digest(&HeaderMap::new(), b"x").parse().unwrap(),
        );
        assert!(f.verify(&h2, &Method::POST, "/p").is_err());
        // No claim at all: a normal request.
        assert_eq!(
            f.verify(&HeaderMap::new(), &Method::POST, "/p").unwrap(),
            None
        );
    }
}
