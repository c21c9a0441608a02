//! The grammars of option values; each error names its flag.

use super::settings::DEFAULT_PROFILES;
use super::{AccessMode, ConfigError, CorsOrigins, ProfileName, RateLimit, invalid};
use shared::NodeId;
use std::time::Duration;

pub(super) fn parse_access(s: &str) -> Result<AccessMode, ConfigError> {
    match s {
        "members" => Ok(AccessMode::Members),
        "claims" => Ok(AccessMode::Claims),
        "open" => Ok(AccessMode::Open),
        other => Err(invalid("access", format!("'{other}' is not members, claims or open"))),
    }
}

pub(super) fn parse_cors(s: &str) -> Result<CorsOrigins, ConfigError> {
    let s = s.trim();
    if s == "*" {
        return Ok(CorsOrigins::Any);
    }
    if s.is_empty() {
        return Ok(CorsOrigins::None);
    }
    let origins: Vec<String> = s
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .collect();
    for o in &origins {
        let ok =
            (o.starts_with("http://") || o.starts_with("https://")) && axum::http::HeaderValue::from_str(o).is_ok();
        if !ok {
            return Err(invalid(
                "cors-origins",
                format!("'{o}' is not an origin like https://app.example.com"),
            ));
        }
    }
    Ok(CorsOrigins::List(origins))
}

/// Parses `/=alt,/chat=chat`; entries replace the defaults for the namespaces they name.
pub(super) fn parse_profiles(s: Option<&str>) -> Result<Vec<(String, ProfileName)>, ConfigError> {
    let mut out = Vec::new();
    let mut apply = |entry: &str| -> Result<(), ConfigError> {
        let entry = entry.trim();
        let (ns, profile) = entry
            .split_once('=')
            .ok_or_else(|| invalid("socketio-profile", format!("'{entry}' is not NAMESPACE=PROFILE")))?;
        let ns = ns.trim();
        if !ns.starts_with('/') || ns.contains(char::is_whitespace) {
            return Err(invalid(
                "socketio-profile",
                format!("namespace '{ns}' must start with /"),
            ));
        }
        let profile = match profile.trim() {
            "alt" => ProfileName::Alt,
            "chat" => ProfileName::Chat,
            "bam" => ProfileName::Bam,
            other => {
                return Err(invalid(
                    "socketio-profile",
                    format!("profile '{other}' is not alt, chat or bam"),
                ));
            }
        };
        match out.iter_mut().find(|(n, _): &&mut (String, ProfileName)| n == ns) {
            Some(slot) => slot.1 = profile,
            None => out.push((ns.to_owned(), profile)),
        }
        Ok(())
    };
    for entry in DEFAULT_PROFILES.split(',') {
        apply(entry)?;
    }
    if let Some(s) = s {
        for entry in s.split(',').filter(|e| !e.trim().is_empty()) {
            apply(entry)?;
        }
    }
    Ok(out)
}

pub(super) fn parse_size(flag: &'static str, s: &str) -> Result<u64, ConfigError> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| invalid(flag, format!("'{s}' is not a size like 1MB or 8KiB")))
}

/// Parses a duration like `30s`, `500ms`, `1h`.
pub fn parse_duration(flag: &'static str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim()).map_err(|_| invalid(flag, format!("'{s}' is not a duration like 30s or 500ms")))
}

pub(super) fn parse_rate_limit(flag: &'static str, s: &str) -> Result<RateLimit, ConfigError> {
    let bad = || invalid(flag, format!("'{s}' is not like 50/s,burst=200"));
    let mut parts = s.split(',');
    let rate = parts.next().ok_or_else(bad)?.trim();
    let (n, unit) = rate.split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let per_second = match unit.trim() {
        "s" => n,
        "m" => n / 60.0,
        _ => return Err(bad()),
    };
    let mut burst = per_second.ceil().max(1.0) as u32;
    for part in parts {
        let (k, v) = part.split_once('=').ok_or_else(bad)?;
        if k.trim() != "burst" {
            return Err(bad());
        }
        burst = v.trim().parse().map_err(|_| bad())?;
    }
    if !(per_second.is_finite() && per_second > 0.0) || burst == 0 {
        return Err(bad());
    }
    Ok(RateLimit { per_second, burst })
}

pub(super) fn default_node_id() -> NodeId {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "node".into());
    let suffix: u32 = rand::random();
    NodeId::from(format!("{host}-{:06x}", suffix & 0xff_ffff))
}
