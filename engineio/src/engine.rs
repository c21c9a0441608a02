//! The sessions of one server, and the contract with the layer above.

use crate::close::{Closing, DisconnectReason};
use crate::config::Config;
use crate::packet::Packet;
use crate::session::{Session, Transport};
use crate::timers::Wheel;
use base64::Engine as _;
use rand::RngCore;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// What the layer above (Socket.IO) does with a session's messages. The engine calls it from
/// the task that read the message, so a method must not block: spawn for anything slow.
pub trait Handler: Send + Sync + Sized + 'static {
    /// Per-session state of the layer above, created with the session.
    type Data: Default + Send + Sync + 'static;
    /// The engine whose sessions this handler serves.
    fn engine(&self) -> &Engine<Self::Data>;
    /// A text message: the text after Engine.IO's `4`.
    fn on_message(self: &Arc<Self>, session: &Arc<Session<Self::Data>>, text: &str);
    /// A binary message.
    fn on_binary(self: &Arc<Self>, session: &Arc<Session<Self::Data>>, data: &[u8]);
    /// The session ended; called once, after it left the engine.
    fn on_close(self: &Arc<Self>, session: &Arc<Session<Self::Data>>, reason: DisconnectReason);
}

/// Every session of the server, by sid.
pub struct Engine<D> {
    sessions: Mutex<HashMap<Box<str>, Arc<Session<D>>>>,
    /// The heartbeats of WebSocket sessions (a polling session keeps its own task until it
    /// upgrades).
    heartbeats: Wheel<Session<D>>,
    /// The settings every session shares.
    pub settings: Config,
}

impl<D: Default + Send + Sync + 'static> Engine<D> {
    /// An engine without sessions.
    pub fn new(settings: Config) -> Self {
        let config = settings.clone();
        let beat = move |session: &Session<D>, _now| {
            if session.is_closed() {
                return None;
            }
            match session.heartbeat(&config) {
                Ok(next) => Some(next),
                Err(reason) => {
                    session.close_now(reason);
                    None
                }
            }
        };
        Self {
            sessions: Mutex::default(),
            heartbeats: Wheel::new(heartbeat_tick(&settings), Box::new(beat)),
            settings,
        }
    }

    /// Keeps the heartbeat of a WebSocket session from now on: pings when due, and closes
    /// it when a pong is late.
    pub(crate) fn keep_heartbeat(&self, session: &Arc<Session<D>>) {
        let next = session.state().heartbeat.next;
        self.heartbeats.insert(session, next);
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<Session<D>>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, sid: &str) -> Option<Arc<Session<D>>> {
        self.map().get(sid).cloned()
    }

    pub(crate) fn open(&self, token: Option<Box<str>>, transport: Transport) -> Arc<Session<D>> {
        let session = Arc::new(Session::new(random_id(), token, transport, &self.settings));
        self.map().insert(session.sid.clone(), session.clone());
        session
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<Arc<Session<D>>> {
        self.map().values().cloned().collect()
    }

    /// The open packet: the session's id and the heartbeat the client must keep.
    pub(crate) fn open_packet(&self, sid: &str, upgrades: &[&str]) -> Packet {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Open<'a> {
            sid: &'a str,
            upgrades: &'a [&'a str],
            ping_interval: u128,
            ping_timeout: u128,
            max_payload: usize,
        }
        let mut out = vec![b'0'];
        let open = Open {
            sid,
            upgrades,
            ping_interval: self.settings.ping_interval.as_millis(),
            ping_timeout: self.settings.ping_timeout.as_millis(),
            max_payload: self.settings.max_payload,
        };
        // Strings and numbers always serialize.
        let _ = serde_json::to_writer(&mut out, &open);
        Packet::new(&out)
    }
}

/// How precisely heartbeats are kept: a tenth of the shorter of the interval and the
/// timeout, at most half a second (a ping late by that, against a client that waits
/// `pingInterval + pingTimeout` for it).
fn heartbeat_tick(settings: &Config) -> Duration {
    (settings.ping_interval.min(settings.ping_timeout) / 10).clamp(Duration::from_millis(1), Duration::from_millis(500))
}

/// A random 20-character URL-safe id (120 bits).
pub fn random_id() -> Box<str> {
    let mut bytes = [0u8; 15];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes).into()
}

/// Removes a session from the engine and tells the layer above, once.
pub(crate) fn finish<H: Handler>(h: &Arc<H>, session: &Arc<Session<H::Data>>, reason: DisconnectReason) {
    let removed = h.engine().map().remove(&session.sid).is_some();
    if removed {
        {
            let mut st = session.state();
            st.closing.get_or_insert(Closing::Now(reason));
            st.out.queue.clear();
        }
        session.wake_all();
        h.on_close(session, reason);
    }
}
