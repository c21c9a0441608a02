//! `--dev`: credentials generated once and kept in the working directory, so that tokens
//! printed by one run keep working in the next.

use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;

/// File name of the kept credentials, in the working directory.
pub const DEV_FILE: &str = ".switchboard-dev.json";

/// Generated development credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevCredentials {
    /// HS256 secret for user tokens.
    pub jwt_secret: String,
    /// REST API key.
    pub api_key: String,
}

impl DevCredentials {
    /// Reads the credentials kept in `dir`, or generates and keeps new ones.
    pub fn load_or_create(dir: &Path) -> io::Result<Self> {
        let path = dir.join(DEV_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let creds = DevCredentials {
                    jwt_secret: random_hex(32),
                    api_key: random_hex(24),
                };
                let json = serde_json::to_vec_pretty(&creds).map_err(io::Error::other)?;
                std::fs::write(&path, json)?;
                Ok(creds)
            }
            Err(e) => Err(e),
        }
    }
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}
