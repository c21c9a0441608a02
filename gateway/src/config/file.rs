//! The `--config` TOML file, layered under the flags and env values clap already resolved.

use super::{ConfigError, Options};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

impl Options {
    /// Merges the `--config` file under the flags and env values clap already resolved.
    pub fn layered(self) -> Result<Options, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file_error = |reason: String| ConfigError::File {
            path: path.display().to_string(),
            reason,
        };
        if !path.is_file() {
            return Err(file_error("no such file".into()));
        }
        let mut merged: Options = Figment::new()
            .merge(Toml::file_exact(&path))
            .merge(Serialized::defaults(&self))
            .extract()
            .map_err(|e| file_error(e.to_string().replace('\n', " ")))?;
        merged.config = Some(path);
        Ok(merged)
    }
}
