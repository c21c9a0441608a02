//! Wire types shared by the Switchboard gateway and the tools that talk to it.
//!
//! - [`ids`]: the string identifiers of users, conversations, connections and nodes.
//! - [`error`]: the error codes every protocol reports (PROTOCOL.md 2.2).
//! - [`presence`]: user statuses.
//! - [`event`]: domain events as they travel on the bus, with their payloads.
//! - [`node`]: what a node reports about itself to the others.
//! - [`phoenix`]: the Phoenix Channels V2 JSON frame (fuzzed by `fuzz/`).

pub mod error;
pub mod event;
pub mod ids;
pub mod node;
pub mod phoenix;
pub mod presence;

pub use error::ErrorCode;
pub use event::{Delivery, Envelope, Event, Topic};
pub use ids::{ConnId, ConversationId, IdError, MAX_ID_BYTES, NodeId, UserId, check_id};
pub use presence::Status;
