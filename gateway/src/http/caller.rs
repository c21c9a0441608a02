//! Who calls the REST API: the server (API key, an admin token, or loopback where allowed) or
//! a user acting as themselves (a user JWT).

use super::AppState;
use super::error::ApiError;
use crate::auth::Identity;
use crate::domain::DomainError;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use engineio::net::ConnInfo;
use std::net::IpAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// An authenticated REST caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Every right.
    Server,
    /// Acts as this user.
    User(Identity),
}

impl Caller {
    /// Refuses callers without every right.
    pub fn require_server(&self) -> Result<(), ApiError> {
        match self {
            Caller::Server => Ok(()),
            Caller::User(_) => {
                Err(DomainError::Forbidden("this route needs the API key or an admin token".into()).into())
            }
        }
    }

    /// The identity whose access rules apply; `None` for the server.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Caller::Server => None,
            Caller::User(who) => Some(who),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let presented = header("x-api-key").or_else(|| header("authorization").and_then(crate::auth::bearer));
        let Some(credential) = presented.filter(|c| !c.is_empty()) else {
            let loopback = parts
                .extensions
                .get::<ConnectInfo<ConnInfo>>()
                .is_some_and(|ConnectInfo(conn)| is_loopback(conn.remote.ip()));
            if state.loopback_trusted && loopback {
                return Ok(Caller::Server);
            }
            return Err(
                DomainError::Unauthorized("missing credentials: send the API key or a user token".into()).into(),
            );
        };
        if let Some(key) = &state.api_key
            && bool::from(key.as_bytes().ct_eq(credential.as_bytes()))
        {
            return Ok(Caller::Server);
        }
        let who = state
            .jwt
            .verify(credential)
            .map_err(|e| DomainError::Unauthorized(format!("unauthorized: {e}")))?;
        // Every token is limited, admin tokens included; the API key and loopback are not.
        state.domain.allow_rest(&who.user_id)?;
        Ok(if who.admin { Caller::Server } else { Caller::User(who) })
    }
}

/// A loopback peer: `127.0.0.0/8`, `::1`, or an IPv4 loopback address as a dual-stack
/// listener (`[::]`) sees it, IPv4-mapped (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, item 6.
    #[test]
    fn ipv4_mapped_loopback_is_loopback() {
        for (ip, loopback) in [
            ("127.0.0.1", true),
            ("127.3.2.1", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:127.9.9.9", true),
            ("::ffff:10.0.0.1", false),
            ("10.0.0.1", false),
            ("::", false),
            ("0.0.0.0", false),
            ("::127.0.0.1", false),
            ("fe80::1", false),
        ] {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            assert_eq!(is_loopback(ip), loopback, "{ip}");
        }
    }
}
