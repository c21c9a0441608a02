//! What a node tells the others about itself, every few seconds, so that any node can show
//! the whole cluster (the console's `/api/nodes`).

use crate::NodeId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One node's report: its identity, health and running totals. Totals only grow (until the
/// node restarts), so a reader turns two reports into rates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The node.
    pub node_id: NodeId,
    /// Its build version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it wrote this report.
    pub reported_at: DateTime<Utc>,
    /// Why it does not take new work (`draining`, `redis`, `database`…); `None` when ready.
    pub not_ready: Option<String>,
    /// Its open connections, per protocol.
    pub connections: ProtocolCounts,
    /// Running totals since it started.
    pub totals: Totals,
}

/// A count per client protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolCounts {
    /// Socket.IO sessions (every namespace).
    pub socketio: u64,
    /// Phoenix sockets.
    pub phoenix: u64,
}

/// Running totals of one node's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Connections opened.
    pub connects: u64,
    /// Connections closed.
    pub disconnects: u64,
    /// Events received from clients.
    pub events_in: u64,
    /// Event frames written to clients (one per recipient connection).
    pub frames_out: u64,
    /// Events this node published on the bus.
    pub published: u64,
    /// Events the bus brought from other nodes.
    pub received: u64,
    /// Frames not written because a client could not keep up, and bus events lost.
    pub drops: u64,
}
