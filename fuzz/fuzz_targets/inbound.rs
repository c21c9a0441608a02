//! The inbound payload readers (the gateway's `inbound` module, shared by Socket.IO, Phoenix
//! and REST) must answer any payload with a value or a `bad_request`, never a panic, and keep
//! their bounds: the property is `inbound::fuzz_read`, which `cargo test` also runs on this
//! target's stored corpus (`gateway/tests/fuzz_corpora.rs`).
#![no_main]

// The module file itself, not the gateway crate: see Cargo.toml. `domain` stands in for the
// few domain types the readers build.
#[path = "../../gateway/src/inbound.rs"]
#[allow(dead_code)]
mod inbound;

#[allow(dead_code)]
mod domain {
    use shared::ConversationId;

    /// As `gateway::domain::MAX_ATTACHMENTS`.
    pub const MAX_ATTACHMENTS: usize = 10;

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum DomainError {
        #[error("{0}")]
        BadRequest(String),
    }

    #[derive(Debug, Clone)]
    pub struct SendRequest {
        pub conversation_id: ConversationId,
        pub content: String,
        pub kind: Option<String>,
        pub attachments: Vec<String>,
        pub client_ref: Option<String>,
        pub metadata: Option<serde_json::Value>,
    }

    #[derive(Debug, Clone)]
    pub struct HistoryRequest {
        pub conversation_id: ConversationId,
        pub before: Option<i64>,
        pub after: Option<i64>,
        pub limit: Option<u32>,
    }
}

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| inbound::fuzz_read(data));
