//! Configuration: command-line flags, their `SWITCHBOARD_*` env twins, and a `--config` TOML
//! file, merged once at start-up into typed structs (precedence flag > env > file > default).
//! Nothing else in the gateway reads the environment.
//!
//! - `cli`: the command line and [`Options`], every option as an unvalidated string.
//! - `file`: the `--config` file layered under flags and env.
//! - `settings`: the typed, validated [`Config`] and its parts.
//! - `validate`: [`Options`] → [`Config`], one error per flag.
//! - `jwt`: JWT settings, reading the key files.
//! - `parse`: the value grammars (sizes, durations, rates, profiles, origins).

mod cli;
mod file;
mod jwt;
mod parse;
mod settings;
#[cfg(test)]
mod tests;
mod validate;

pub use cli::{Cli, Command, Options, TokenArgs};
pub use jwt::jwt_settings;
pub use parse::parse_duration;
pub use settings::{
    AccessMode, AuthConfig, Config, CorsOrigins, DEFAULT_LISTEN, Limits, LogFormat, ProfileName, RateLimit,
    RedisSettings, ServerLimits, SocketIoSettings,
};

/// A configuration error: one line, naming the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag (or its env twin, or its key in the file) has a value that cannot be used.
    #[error("invalid value for --{flag}: {reason}")]
    Invalid {
        /// The flag, without dashes.
        flag: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// A combination of flags that cannot start a node.
    #[error("{0}")]
    Refused(String),
    /// The `--config` file cannot be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file given to `--config`.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

pub(crate) fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}
