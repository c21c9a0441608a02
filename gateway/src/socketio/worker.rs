//! One Engine.IO session's worker, on the connection runtime's inbox: runs the session's
//! Socket.IO packets one after the other, whatever their namespace — a CONNECT before the
//! events that follow it in the same read, an event after the one before it (a
//! `typing:stop` never overtakes its `typing:start`), a removal from a conversation after
//! the join in flight — and answers each.

use super::commands::{ErrorBody, Failure, INBOUND, Inbound, Reply, Success};
use super::{SioSession, SioSocket, SocketIoAdapter, packet};
use crate::domain::{ConnKey, DomainError};
use crate::metrics::{METRICS, Protocol};
use crate::runtime;
use engineio::{DisconnectReason, Session};
use serde_json::Value;
use shared::ConversationId;
use std::sync::Arc;

/// What a session's worker is asked to do.
pub(super) enum Input {
    /// A namespace CONNECT, with its `auth` payload.
    Connect { ns: u8, auth: Option<Value> },
    /// An event: its name and first argument, and the ack id the client waits on.
    Event {
        ns: u8,
        ack: Option<i64>,
        name: String,
        payload: Value,
    },
    /// A binary event, refused.
    Binary { ns: u8, ack: Option<i64> },
    /// The client left a namespace.
    Disconnect { ns: u8 },
    /// The domain removed a socket's user from a conversation.
    Removed {
        socket: ConnKey,
        conversation: ConversationId,
    },
    /// A socket the server closed: the domain is told after the commands before.
    Gone { socket: ConnKey },
    /// A packet that breaks the protocol: the session closes after answering what came
    /// before it, as the reference server does.
    Fail(DisconnectReason),
}

/// The sequential runner of one Engine.IO session's packets.
pub(super) struct Worker {
    pub(super) adapter: Arc<SocketIoAdapter>,
    pub(super) session: Arc<Session<SioSession>>,
}

impl runtime::Worker for Worker {
    type Input = Input;

    async fn input(&mut self, input: Input) {
        let adapter = self.adapter.clone();
        match input {
            Input::Connect { ns, auth } => {
                if self.session.data.socket(ns).is_some() {
                    // A second CONNECT for a connected namespace would make a second socket
                    // for one client: every delivery twice.
                    tracing::debug!(sid = %self.session.sid, "CONNECT for a connected namespace ignored");
                } else {
                    adapter.connect(&self.session, ns, auth).await;
                }
            }
            Input::Event { ns, ack, name, payload } => {
                if let Some(socket) = self.session.data.socket(ns) {
                    self.event(&socket, ack, &name, payload).await;
                }
            }
            Input::Binary { ns, ack } => {
                if let Some(socket) = self.session.data.socket(ns) {
                    let error = DomainError::BadRequest("binary payloads are not supported".into());
                    adapter.reply(&socket, "", ack, Err(error));
                }
            }
            Input::Disconnect { ns } => {
                if let Some(socket) = self.session.data.socket(ns) {
                    adapter.forget(&socket, DisconnectReason::ClientClose);
                    adapter.ctx.domain.disconnect(&socket.conn.local).await;
                }
            }
            Input::Removed { socket, conversation } => {
                let socket = self.session.data.socket_by_key(socket);
                if let Some((socket, who)) = socket.and_then(|s| s.conn.identity.get().cloned().map(|w| (s, w))) {
                    let local = &socket.conn.local;
                    if let Err(e) = adapter.ctx.domain.leave(local, &who, &conversation).await {
                        tracing::warn!(conn = %local.id, error = %e, "removed member not taken out of presence");
                    }
                }
            }
            Input::Gone { socket } => {
                if let Some(local) = self.session.data.take_gone(socket) {
                    adapter.ctx.domain.disconnect(&local).await;
                }
            }
            Input::Fail(reason) => self.session.close_after_flush(reason),
        }
    }

    fn panicked(&self) {
        self.session.close_now(DisconnectReason::ServerClose);
    }

    fn domain(&self) -> &Arc<crate::domain::Domain> {
        &self.adapter.ctx.domain
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("sio_session", sid = %self.session.sid)
    }
}

impl Worker {
    /// One event: rate limit, command, panic guard, reply.
    async fn event(&self, socket: &Arc<SioSocket>, ack: Option<i64>, name: &str, payload: Value) {
        let adapter = &self.adapter;
        let started = std::time::Instant::now();
        let command = INBOUND.iter().find(|(n, _)| *n == name).map(|(_, c)| *c);
        let span = tracing::info_span!("sio_event", event = %name, conn = %socket.conn.local.id);
        let result = match (socket.conn.rate.allow(), command) {
            (false, _) => Err(DomainError::RateLimited),
            (true, None) => Err(DomainError::BadRequest(format!("unknown event '{name}'"))),
            (true, Some(command)) => runtime::guarded(adapter.dispatch(socket, command, payload), &span).await,
        };
        // A join's socket starts hearing the conversation once its answer is written.
        let mut result = result;
        let live = match &mut result {
            Ok(Reply::Joined { live, .. }) => live.take(),
            _ => None,
        };
        adapter.reply(socket, name, ack, result);
        drop(live);
        let verb = match command {
            Some(Inbound::Command(verb)) => Some(verb),
            _ => None,
        };
        runtime::record(Protocol::SocketIo, verb, started);
    }

    /// The closed session's sockets leave the hub and presence.
    pub(super) async fn finish(self, reason: DisconnectReason) {
        let sockets = self.session.data.take_all();
        for socket in sockets {
            self.adapter.forget(&socket, reason);
            self.adapter.ctx.domain.disconnect(&socket.conn.local).await;
        }
        for local in self.session.data.take_all_gone() {
            self.adapter.ctx.domain.disconnect(&local).await;
        }
    }
}

impl SocketIoAdapter {
    /// The one place a command's outcome becomes what the client sees: an ack when it asked
    /// for one, otherwise an `error` event for failures.
    pub(super) fn reply(&self, socket: &SioSocket, event: &str, ack: Option<i64>, result: Result<Reply, DomainError>) {
        if let Err(e) = &result {
            METRICS.inbound_errors.with_label_values(&[e.code().as_str()]).inc();
        }
        let ns = self.ns_name(socket.ns);
        let encoded = match (result, ack) {
            (Ok(body), Some(id)) => packet::ack(ns, id, &Success { success: true, body }),
            (Ok(_), None) => return,
            (Err(e), Some(id)) => packet::ack(
                ns,
                id,
                &Failure {
                    success: false,
                    error: ErrorBody {
                        code: e.code().as_str(),
                        message: e.to_string(),
                        event: None,
                    },
                },
            ),
            (Err(e), None) => packet::event(
                ns,
                self.profile(socket.ns).error,
                &ErrorBody {
                    code: e.code().as_str(),
                    message: e.to_string(),
                    event: Some(event),
                },
            ),
        };
        match encoded {
            Ok(p) => socket.session.send(p),
            Err(e) => tracing::warn!(event, error = %e, "reply not encoded"),
        }
    }
}
