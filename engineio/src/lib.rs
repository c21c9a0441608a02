//! Engine.IO v4, server side: sessions over WebSocket and HTTP long-polling, the upgrade from
//! one to the other, heartbeats, bounded outbound queues, and closing. The layer above
//! (Socket.IO) implements [`Handler`] and sees whole messages; it answers with [`Packet`]s.
//!
//! The components, one concept each:
//! - [`config`]: the settings every session shares, with their defaults.
//! - [`engine`]: the sessions by id, and the [`Handler`] contract with the layer above.
//! - [`session`]: one client's outbound queue, heartbeat and close state.
//! - [`close`]: why a connection ended: [`DisconnectReason`], one label set for both kinds.
//! - [`websocket`]: a plain WebSocket without Engine.IO (Phoenix Channels runs on it), with
//!   the same direct writes, bounded outbox and one task per socket.
//! - [`packet`]: the Engine.IO packet text codec, and outbound packets pre-framed.
//! - `outbox`: the bounded outbound queue with write-through and `writev` flushes, shared by
//!   Engine.IO sessions and plain WebSockets.
//! - [`frame`]: RFC 6455 framing over the raw TCP stream (client frames in, headers out).
//! - `transport`: the HTTP routes — handshake, long-polling, WebSocket and the upgrade.
//! - [`net`]: accepted connections whose TCP stream a WebSocket session takes over, counted.
//! - [`serve`]: HTTP over them with a request-head deadline, a connection cap that still
//!   serves the probes, and a graceful stop.
//! - [`stats`]: process-wide counters for the embedding server's metrics.
//! - `timers`: one task that keeps the heartbeats and idle timeouts of every connection.

#![warn(missing_docs)]

pub mod close;
pub mod config;
pub mod engine;
pub mod frame;
pub mod net;
mod outbox;
pub mod packet;
pub mod serve;
pub mod session;
pub mod stats;
mod timers;
mod transport;
pub mod websocket;

pub use close::DisconnectReason;
pub use config::Config;
pub use engine::{Engine, Handler, random_id};
pub use packet::{Packet, PacketBuilder};
pub use session::Session;
pub use transport::{bearer, routes, routes_at};
