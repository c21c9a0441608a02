//! User statuses.

use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// What a user shows to others. `Offline` while connected means invisible: others see the
/// user offline in events, lists and presence queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Connected and available (the status of every new connection).
    #[default]
    Online,
    /// Connected, away.
    Away,
    /// Connected, busy.
    Busy,
    /// Not connected, or invisible.
    Offline,
}

impl Status {
    /// The status as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Away => "away",
            Self::Busy => "busy",
            Self::Offline => "offline",
        }
    }
}

/// The error for a status name outside the four known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStatus;

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(Self::Online),
            "away" => Ok(Self::Away),
            "busy" => Ok(Self::Busy),
            "offline" => Ok(Self::Offline),
            _ => Err(UnknownStatus),
        }
    }
}
