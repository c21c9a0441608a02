//! The Socket.IO adapter (Engine.IO v4, WebSocket and long-polling): authenticates
//! connections, turns inbound events into domain commands and acks, and renders the domain
//! events this node receives into each namespace's vocabulary.

mod profile;

pub use profile::{Profile, profile};

use crate::auth::{Identity, JwtSettings};
use crate::bus::LocalSink;
use crate::config::{Config, RateLimit};
use crate::domain::{Domain, DomainError, RateLimiter};
use crate::inbound;
use crate::metrics::METRICS;
use crate::net::{Closer, ConnInfo};
use async_trait::async_trait;
use futures::FutureExt;
use serde::Serialize;
use serde_json::Value;
use shared::event::{Membership, Message, ReceiptStatus};
use shared::{ConnId, ConversationId, Delivery, Event, NodeId, Status, Topic, UserId};
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::{BroadcastError, SocketError};
use socketioxide::{ParserError, SocketIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::Instrument;

/// Engine.IO heartbeat. A ping that finds the connection's outbound queue full closes it at
/// once, so a consumer whose queue stays full is closed within this interval (the slow
/// consumer rule); a client that stops answering is closed after interval + timeout.
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Each WebSocket connection's read buffer, allocated up front (socketioxide's default is
/// 4 KiB). Client frames are small; a larger frame is read in several calls.
const WS_READ_BUFFER: usize = 1024;

/// How many batches a drain closes client transports in.
const DRAIN_BATCHES: usize = 10;

/// Inbound events and the command each one is (PROTOCOL.md 2.2), aliases included.
const INBOUND: &[(&str, Command)] = &[
    ("register", Command::Register),
    ("room:join", Command::Join),
    ("conversation:join", Command::Join),
    ("join-bam", Command::Join),
    ("room:leave", Command::Leave),
    ("conversation:leave", Command::Leave),
    ("leave-bam", Command::Leave),
    ("typing:start", Command::TypingStart),
    ("typing-start", Command::TypingStart),
    ("typing:stop", Command::TypingStop),
    ("typing-stop", Command::TypingStop),
    ("message:typing", Command::Typing),
    ("presence:update", Command::Status),
    ("status-change", Command::Status),
    ("conversation:users:online", Command::OnlineUsers),
    ("message:send", Command::Send),
    ("send-message", Command::Send),
    ("message:delivered", Command::Delivered),
    ("message:read", Command::Read),
    ("conversation:read", Command::ReadAll),
    ("mark_all_read", Command::ReadAll),
    ("reaction:add", Command::ReactionAdd),
    ("reaction:remove", Command::ReactionRemove),
    ("conversation:history", Command::History),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Register,
    Join,
    Leave,
    TypingStart,
    TypingStop,
    Typing,
    Status,
    OnlineUsers,
    Send,
    Delivered,
    Read,
    ReadAll,
    ReactionAdd,
    ReactionRemove,
    History,
}

fn user_room(user: &UserId) -> String {
    format!("u:{user}")
}

fn conversation_room(conversation: &ConversationId) -> String {
    format!("c:{conversation}")
}

/// What every handler needs, shared through socketioxide's state.
struct Ctx {
    domain: Arc<Domain>,
    jwt: JwtSettings,
    allow_register: bool,
    rate: RateLimit,
    node_id: NodeId,
    profiles: HashMap<String, &'static Profile>,
}

impl Ctx {
    fn profile(&self, ns: &str) -> &'static Profile {
        self.profiles.get(ns).copied().unwrap_or(&profile::ALT)
    }
}

/// One connection's state, kept in its socket's extensions.
struct Conn {
    id: ConnId,
    identity: OnceLock<Identity>,
    rate: RateLimiter,
    order: Sequencer,
    /// Closes the TCP connection the handshake came on (the transport, for WebSocket clients).
    closer: Option<Closer>,
}

/// Runs a connection's events one after the other, in arrival order: socketioxide spawns a
/// task per event, so without this a `typing:stop` could overtake its `typing:start`.
/// Each event waits for the previous one's ticket; a finished (or panicked) event drops its
/// ticket, which releases the next.
#[derive(Default)]
struct Sequencer {
    last: Mutex<Option<oneshot::Receiver<()>>>,
}

struct Ticket {
    previous: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Sequencer {
    fn ticket(&self) -> Ticket {
        let (done, next) = oneshot::channel();
        let previous = self.last.lock().unwrap_or_else(PoisonError::into_inner).replace(next);
        Ticket { previous, _done: done }
    }
}

impl Ticket {
    async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = previous.await;
        }
    }
}

/// The first event argument, and whether the client asked for an ack.
struct Inbound {
    payload: Result<Value, ParserError>,
    wants_ack: bool,
}

impl FromMessageParts<LocalAdapter> for Inbound {
    type Error = Infallible;
    fn from_message_parts(
        s: &Arc<Socket<LocalAdapter>>,
        v: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let TryData(payload) = TryData::<Value>::from_message_parts(s, v, ack_id)?;
        Ok(Inbound {
            payload,
            wants_ack: ack_id.is_some(),
        })
    }
}

/// A successful ack: `{ success: true, … }`.
#[derive(Serialize)]
struct Success<T: Serialize> {
    success: bool,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
enum Reply {
    Registered {
        user_id: UserId,
    },
    Joined {
        message: String,
        conversation_id: ConversationId,
        online_users: Vec<UserId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        missed: Option<Vec<Message>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        has_more: Option<bool>,
    },
    Sent {
        message: Message,
    },
    History {
        messages: Vec<Message>,
        has_more: bool,
    },
    Left {
        conversation_id: ConversationId,
    },
    Status {
        status: Status,
    },
    Online {
        online_users: Vec<UserId>,
    },
    Done {},
}

#[derive(Serialize)]
struct Failure<'a> {
    success: bool,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfirmation<'a> {
    conversation_id: &'a ConversationId,
    online_users: &'a [UserId],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SendConfirmation<'a> {
    temp_id: Option<&'a str>,
    message: &'a Message,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// The Socket.IO side of a node: the HTTP layer to mount, and the sink the bus delivers to.
pub struct SocketIoAdapter {
    io: SocketIo,
    namespaces: Vec<(String, &'static Profile)>,
    ctx: Arc<Ctx>,
}

impl SocketIoAdapter {
    /// Builds the adapter and its tower layer, with every namespace of the configuration.
    pub fn build(config: &Config, domain: Arc<Domain>) -> Result<(SocketIoLayer, Arc<Self>), String> {
        let jwt = config.auth.jwt.clone().ok_or("no JWT settings")?;
        let namespaces: Vec<(String, &'static Profile)> = config
            .socketio
            .namespaces
            .iter()
            .map(|(ns, name)| (ns.clone(), profile(*name)))
            .collect();
        let ctx = Arc::new(Ctx {
            domain,
            jwt,
            allow_register: config.auth.allow_register,
            rate: config.socketio.rate_limit,
            node_id: config.node_id.clone(),
            profiles: namespaces.iter().cloned().collect(),
        });
        let max_payload = config.socketio.max_payload;
        let (layer, io) = SocketIo::builder()
            .with_state(ctx.clone())
            .ping_interval(PING_INTERVAL)
            .ping_timeout(PING_TIMEOUT)
            .max_buffer_size(config.socketio.max_outbound_queue)
            .ws_read_buffer_size(WS_READ_BUFFER)
            .max_payload(max_payload)
            .ws_max_message_size(usize::try_from(max_payload).unwrap_or(usize::MAX))
            .ws_max_frame_size(usize::try_from(max_payload).unwrap_or(usize::MAX))
            .build_layer();
        for (ns, _) in &namespaces {
            io.ns(ns.clone(), on_connect.with(authenticate));
        }
        Ok((layer, Arc::new(Self { io, namespaces, ctx })))
    }

    /// A removed member's local connections leave the conversation at once.
    async fn remove_member(&self, sockets: Vec<SocketRef>, removed: &Membership) {
        let room = conversation_room(&removed.conversation_id);
        for socket in sockets {
            let Some(conn) = socket.extensions.get::<Arc<Conn>>() else {
                continue;
            };
            let Some(who) = conn.identity.get() else { continue };
            if let Err(e) = self.ctx.domain.leave(&conn.id, who, &removed.conversation_id).await {
                tracing::warn!(conn = %conn.id, error = %e, "removed member not taken out of presence");
            }
            socket.leave(room.clone());
        }
    }

    /// Closes every connection's transport, in batches spread over `window`, so that clients
    /// reconnect elsewhere by themselves and not all at once. Connections whose transport is
    /// not the handshake's TCP connection (long-polling, upgraded) are closed at the end.
    pub async fn drain(&self, window: Duration) {
        let mut closers: Vec<Closer> = Vec::new();
        for (ns, _) in &self.namespaces {
            let Some(ops) = self.io.of(ns) else { continue };
            for socket in ops.sockets() {
                if let Some(closer) = socket.extensions.get::<Arc<Conn>>().and_then(|c| c.closer.clone())
                    && !closers.iter().any(|c| c.same(&closer))
                {
                    closers.push(closer);
                }
            }
        }
        let per_batch = closers.len().div_ceil(DRAIN_BATCHES).max(1);
        let pause = window / DRAIN_BATCHES as u32;
        tracing::info!(connections = closers.len(), per_batch, "closing client transports");
        for batch in closers.chunks(per_batch) {
            for closer in batch {
                closer.close();
            }
            tokio::time::sleep(pause).await;
        }
        self.io.close().await;
    }
}

#[async_trait]
impl LocalSink for SocketIoAdapter {
    async fn deliver(&self, delivery: Arc<Delivery>) {
        for (ns, profile) in &self.namespaces {
            let Some(ops) = self.io.of(ns) else { continue };
            let ops = match &delivery.topic {
                Topic::Conversation(c) => ops.to(conversation_room(c)),
                Topic::User(u) => ops.to(user_room(u)),
                Topic::All => ops,
            };
            let ops = match &delivery.except_user {
                Some(u) => ops.except(user_room(u)),
                None => ops,
            };
            match &delivery.event {
                Event::Disconnect(_) => {
                    ops.disconnect().await.ok();
                    continue;
                }
                Event::MemberRemoved(removed) => {
                    self.remove_member(ops.sockets(), removed).await;
                    continue;
                }
                _ => {}
            }
            let Some((name, payload)) = profile.render(&delivery.event) else {
                continue;
            };
            match ops.emit(name, &payload).await {
                Ok(()) => {}
                Err(BroadcastError::Socket(errors)) => {
                    let full = errors
                        .iter()
                        .filter(|e| matches!(e, SocketError::InternalChannelFull))
                        .count();
                    METRICS.outbound_dropped.inc_by(full as u64);
                }
                Err(e) => tracing::warn!(ns = %ns, event = name, error = %e, "event not rendered"),
            }
        }
    }
}

fn reason_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "closing_server",
        _ => "protocol_error",
    }
}

async fn on_connect(s: SocketRef) {
    tracing::debug!(ns = s.ns(), sid = %s.id, transport = ?s.transport_type(), "connected");
}

/// Runs before the client is told it is connected: authenticates, registers the connection
/// and its handlers (here rather than in the connect handler, so that an event emitted right
/// on `connect` finds them).
async fn authenticate(s: SocketRef, State(ctx): State<Arc<Ctx>>, TryData(auth): TryData<Value>) -> Result<(), Refused> {
    let identity = match token(&s, auth.ok().as_ref()) {
        Some(token) => Some(
            ctx.jwt
                .verify(&token)
                .map_err(|e| Refused(format!("unauthorized: {e}")))?,
        ),
        None if ctx.allow_register => None,
        None => return Err(Refused("unauthorized: missing token".into())),
    };
    let conn = Arc::new(Conn {
        // One Engine.IO connection carries a socket per namespace, all with the same sid.
        id: ConnId(format!("{}:{}:{}", ctx.node_id, s.ns(), s.id)),
        identity: OnceLock::new(),
        rate: RateLimiter::new(ctx.rate),
        order: Sequencer::default(),
        closer: s
            .req_parts()
            .extensions
            .get::<axum::extract::ConnectInfo<ConnInfo>>()
            .map(|info| info.0.closer.clone()),
    });
    if let Some(who) = identity {
        s.join(user_room(&who.user_id));
        ctx.domain
            .connect(&conn.id, &who)
            .await
            .map_err(|e| Refused(format!("{}: {e}", e.code().as_str())))?;
        let _ = conn.identity.set(who);
    }
    s.extensions.insert(conn);
    METRICS.connections.inc();
    // One handler for every event, looked up in INBOUND: socketioxide keeps a map of boxed
    // handlers per socket, and sixteen of them cost ~1.7 KB per connection.
    s.on_fallback(
        |s: SocketRef,
         State(ctx): State<Arc<Ctx>>,
         ack: AckSender,
         ev: socketioxide::extract::Event,
         inbound: Inbound| {
            let admitted = admit(&s);
            let known = INBOUND.iter().find(|(name, _)| *name == ev.0);
            let (name, command) = match known {
                Some((name, command)) => (std::borrow::Cow::Borrowed(*name), Some(*command)),
                None => (std::borrow::Cow::Owned(ev.0), None),
            };
            handle(s, ctx, ack, inbound, admitted, name, command)
        },
    );
    s.on_disconnect(|s: SocketRef, State(ctx): State<Arc<Ctx>>, reason: DisconnectReason| {
        let conn = s.extensions.get::<Arc<Conn>>();
        let ticket = conn.as_ref().map(|c| c.order.ticket());
        async move {
            let (Some(conn), Some(mut ticket)) = (conn, ticket) else {
                return;
            };
            ticket.wait().await;
            tracing::debug!(conn = %conn.id, ?reason, "disconnected");
            METRICS.connections.dec();
            METRICS.disconnects.with_label_values(&[reason_label(reason)]).inc();
            ctx.domain.disconnect(&conn.id).await;
        }
    });
    Ok(())
}

/// The token from the handshake `auth.token`, the `token` query parameter, or
/// `Authorization: Bearer`.
fn token(s: &SocketRef, auth: Option<&Value>) -> Option<String> {
    if let Some(Value::String(t)) = auth.and_then(|a| a.get("token"))
        && !t.is_empty()
    {
        return Some(t.clone());
    }
    let parts = s.req_parts();
    let from_query = axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .ok()
        .and_then(|axum::extract::Query(mut m)| m.remove("token"))
        .filter(|t| !t.is_empty());
    if from_query.is_some() {
        return from_query;
    }
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// An event admitted in arrival order: its connection, its place in line, and whether the
/// rate limit let it through.
struct Admitted {
    conn: Option<Arc<Conn>>,
    ticket: Option<Ticket>,
    allowed: bool,
}

/// Runs synchronously as each event arrives, so tickets and tokens are taken in order.
fn admit(s: &SocketRef) -> Admitted {
    let conn = s.extensions.get::<Arc<Conn>>();
    Admitted {
        ticket: conn.as_ref().map(|c| c.order.ticket()),
        allowed: conn.as_ref().is_some_and(|c| c.rate.allow()),
        conn,
    }
}

/// Runs one event after the previous one of its connection: rate limit, payload, command,
/// panic guard, reply. `command` is `None` for an event name we do not know.
async fn handle(
    s: SocketRef,
    ctx: Arc<Ctx>,
    ack: AckSender,
    inbound: Inbound,
    admitted: Admitted,
    name: std::borrow::Cow<'static, str>,
    command: Option<Command>,
) {
    let (Some(conn), Some(mut ticket)) = (admitted.conn, admitted.ticket) else {
        return;
    };
    ticket.wait().await;
    let span = tracing::info_span!("sio_event", event = %name, conn = %conn.id);
    let result = match (admitted.allowed, inbound.payload, command) {
        (false, _, _) => Err(DomainError::RateLimited),
        (true, _, None) => Err(DomainError::BadRequest(format!("unknown event '{name}'"))),
        (true, Err(e), _) => Err(DomainError::BadRequest(format!("unreadable payload: {e}"))),
        (true, Ok(payload), Some(command)) => AssertUnwindSafe(dispatch(&ctx, &s, &conn, command, payload))
            .catch_unwind()
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| {
                tracing::error!(parent: &span, "event handler panicked");
                Err(DomainError::Internal)
            }),
    };
    reply(&s, ctx.profile(s.ns()), &name, ack, inbound.wants_ack, result);
}

/// The one place a command's outcome becomes what the client sees: an ack when it asked
/// for one, otherwise an `error` event for failures.
fn reply(
    s: &SocketRef,
    profile: &Profile,
    event: &str,
    ack: AckSender,
    wants_ack: bool,
    result: Result<Reply, DomainError>,
) {
    if let Err(e) = &result {
        METRICS.inbound_errors.with_label_values(&[e.code().as_str()]).inc();
    }
    let sent = match (result, wants_ack) {
        (Ok(body), true) => ack.send(&Success { success: true, body }).map_err(|e| e.to_string()),
        (Ok(_), false) => Ok(()),
        (Err(e), true) => ack
            .send(&Failure {
                success: false,
                error: ErrorBody {
                    code: e.code().as_str(),
                    message: e.to_string(),
                    event: None,
                },
            })
            .map_err(|e| e.to_string()),
        (Err(e), false) => s
            .emit(
                profile.error,
                &ErrorBody {
                    code: e.code().as_str(),
                    message: e.to_string(),
                    event: Some(event),
                },
            )
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = sent {
        tracing::debug!(event, error = %e, "reply not sent");
    }
}

async fn dispatch(
    ctx: &Ctx,
    s: &SocketRef,
    conn: &Conn,
    command: Command,
    payload: Value,
) -> Result<Reply, DomainError> {
    let who = match command {
        Command::Register => return register(ctx, s, conn, &payload).await,
        _ => conn
            .identity
            .get()
            .ok_or_else(|| DomainError::Unauthorized("connect with a token or register first".into()))?,
    };
    let domain = &ctx.domain;
    match command {
        Command::Register => Err(DomainError::Internal),
        Command::Join => {
            let conversation = inbound::conversation(&payload)?;
            let last_seq = inbound::last_seq(&payload)?;
            let joined = domain.join(&conn.id, who, &conversation, last_seq).await?;
            s.join(conversation_room(&conversation));
            if let Some(name) = ctx.profile(s.ns()).join_confirmation {
                let confirmation = JoinConfirmation {
                    conversation_id: &conversation,
                    online_users: &joined.online_users,
                };
                s.emit(name, &confirmation).ok();
            }
            let (missed, has_more) = match joined.missed {
                Some(page) => (Some(page.messages), Some(page.has_more)),
                None => (None, None),
            };
            Ok(Reply::Joined {
                message: format!("Joined conversation {conversation}"),
                conversation_id: conversation,
                online_users: joined.online_users,
                missed,
                has_more,
            })
        }
        Command::Leave => {
            let conversation = inbound::conversation(&payload)?;
            domain.leave(&conn.id, who, &conversation).await?;
            s.leave(conversation_room(&conversation));
            Ok(Reply::Left {
                conversation_id: conversation,
            })
        }
        Command::TypingStart | Command::TypingStop => {
            let conversation = inbound::conversation(&payload)?;
            domain
                .typing(who, &conversation, command == Command::TypingStart)
                .await?;
            Ok(Reply::Done {})
        }
        Command::Typing => {
            let (conversation, is_typing) = inbound::typing(&payload)?;
            domain.typing(who, &conversation, is_typing).await?;
            Ok(Reply::Done {})
        }
        Command::Status => {
            let status = domain.set_status(who, inbound::status(&payload)?).await?;
            Ok(Reply::Status { status })
        }
        Command::OnlineUsers => {
            let conversation = inbound::conversation(&payload)?;
            let online_users = domain.conversation_online(Some(who), &conversation).await?;
            Ok(Reply::Online { online_users })
        }
        Command::Send => {
            let sent = domain.send(who, inbound::send(&payload)?).await?;
            if let Some(name) = ctx.profile(s.ns()).send_confirmation {
                let confirmation = SendConfirmation {
                    temp_id: sent.message.temp_id.as_deref(),
                    message: &sent.message,
                };
                s.emit(name, &confirmation).ok();
            }
            Ok(Reply::Sent { message: sent.message })
        }
        Command::Delivered | Command::Read => {
            let status = match command {
                Command::Read => ReceiptStatus::Read,
                _ => ReceiptStatus::Delivered,
            };
            domain.receipt(who, &inbound::message_id(&payload)?, status).await?;
            Ok(Reply::Done {})
        }
        Command::ReadAll => {
            domain.mark_all_read(who, &inbound::conversations(&payload)?).await?;
            Ok(Reply::Done {})
        }
        Command::ReactionAdd | Command::ReactionRemove => {
            let (message_id, reaction) = inbound::reaction(&payload)?;
            domain
                .react(who, &message_id, &reaction, command == Command::ReactionAdd)
                .await?;
            Ok(Reply::Done {})
        }
        Command::History => {
            let page = domain.history(Some(who), inbound::history(&payload)?).await?;
            Ok(Reply::History {
                messages: page.messages,
                has_more: page.has_more,
            })
        }
    }
}

/// `register` (seed 000): binds an anonymous connection to a user id.
async fn register(ctx: &Ctx, s: &SocketRef, conn: &Conn, payload: &Value) -> Result<Reply, DomainError> {
    if !ctx.allow_register {
        return Err(DomainError::Unauthorized(
            "register is not enabled on this server (--allow-register)".into(),
        ));
    }
    if conn.identity.get().is_some() {
        return Err(DomainError::BadRequest("this connection already has a user".into()));
    }
    let user_id = inbound::user(payload)?;
    let who = Identity::registered(user_id.clone());
    s.join(user_room(&user_id));
    if let Err(e) = ctx.domain.connect(&conn.id, &who).await {
        s.leave(user_room(&user_id));
        return Err(e);
    }
    let _ = conn.identity.set(who);
    Ok(Reply::Registered { user_id })
}
