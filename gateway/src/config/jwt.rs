//! JWT settings: the secret or the PEM key files named by the flags, or the --dev credentials.

use super::parse::parse_duration;
use super::{ConfigError, Options, invalid};
use crate::auth::{JwtKeys, JwtSettings};
use crate::dev::DevCredentials;

/// JWT settings from the flags, or from the --dev credentials when none are given.
pub fn jwt_settings(o: &Options, dev: Option<&DevCredentials>) -> Result<Option<JwtSettings>, ConfigError> {
    let secret = o.jwt_secret.clone().or_else(|| dev.map(|d| d.jwt_secret.clone()));
    let read = |flag: &'static str, path: &str| {
        std::fs::read(path).map_err(|e| invalid(flag, format!("cannot read {path}: {e}")))
    };
    let public_pem = o
        .jwt_public_key_file
        .as_deref()
        .map(|p| read("jwt-public-key-file", p))
        .transpose()?;
    let private_pem = o
        .jwt_private_key_file
        .as_deref()
        .map(|p| read("jwt-private-key-file", p))
        .transpose()?;
    if secret.as_deref() == Some("") {
        return Err(invalid("jwt-secret", "must not be empty"));
    }
    let keys = JwtKeys::new(secret.as_deref(), public_pem.as_deref(), private_pem.as_deref())
        .map_err(|(flag, reason)| invalid(flag, reason))?;
    let Some(keys) = keys else { return Ok(None) };
    let user_claim = o.jwt_user_claim.clone().unwrap_or_else(|| "sub".into());
    if user_claim.is_empty() {
        return Err(invalid("jwt-user-claim", "must not be empty"));
    }
    Ok(Some(JwtSettings {
        keys,
        issuer: o.jwt_issuer.clone(),
        audience: o.jwt_audience.clone(),
        leeway: parse_duration("jwt-leeway", o.jwt_leeway.as_deref().unwrap_or("5s"))?,
        user_claim,
        require_exp: !o.jwt_allow_no_exp.unwrap_or(false),
    }))
}
