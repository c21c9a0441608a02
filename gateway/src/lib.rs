//! Switchboard gateway: one node of a realtime messaging cluster.
//!
//! The flow of one event, and the module that owns each step:
//! - [`config`]: flags, env and config file, parsed once into typed settings.
//! - [`auth`]: user JWTs verified into an identity; tokens signed for `switchboard token`.
//! - [`http`]: the REST API, health and readiness, mounted with the Socket.IO endpoint.
//! - [`inbound`]: client payload shapes read into domain requests, shared by the adapters.
//! - [`commands`]: the one command surface of both protocols — verbs, typed commands read from
//!   payloads, and `execute`, whose outcome each adapter renders.
//! - [`socketio`]: the Socket.IO adapter — Socket.IO packets over the `engineio` crate's
//!   sessions (WebSocket and polling), inbound events to domain commands, domain events to
//!   each namespace's vocabulary. No business rule lives here.
//! - [`phoenix`]: the Phoenix Channels adapter — channel frames to domain commands, domain
//!   events to seed 004's channel events and Phoenix.Presence. No business rule lives here.
//! - [`domain`]: the rules — access, presence status, typing expiry, who hears about whom —
//!   and its hub, the one registry of local connections that every event is delivered through.
//! - [`bus`]: carries domain events to every node with local members of a topic.
//! - [`store`]: conversations, members and messages — the record.
//! - [`presence`]: who is connected where, with which status.
//! - [`redis`]: the Redis connections a cluster node shares between bus and presence.
//! - [`metrics`]: every Prometheus metric, registered once.
//! - [`telemetry`]: logs, and OpenTelemetry traces across nodes when an OTLP endpoint is set.
//! - [`server`]: wiring, listening, draining on SIGTERM.
//! - [`dev`]: the credentials `--dev` generates and keeps.

pub mod auth;
pub mod bus;
pub mod commands;
pub mod config;
pub mod dev;
pub mod domain;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod phoenix;
pub mod presence;
pub mod redis;
pub mod runtime;
pub mod server;
pub mod socketio;
pub mod store;
pub mod telemetry;
