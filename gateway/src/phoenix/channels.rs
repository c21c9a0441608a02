//! A socket's channels: which topics it joined under which `join_ref`, and where each client
//! frame goes. Pure state, so the protocol rules are tested without a network.

use crate::domain::DomainError;
use crate::inbound;
use shared::phoenix::{Frame, PHOENIX_TOPIC};
use shared::{ConversationId, UserId};

/// Phoenix's limit of channels per socket.
pub const MAX_CHANNELS: usize = 100;

/// A topic this gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKind {
    /// `user:{id}`.
    User(UserId),
    /// `conversation:{id}`.
    Conversation(ConversationId),
}

impl TopicKind {
    /// Reads a topic name; `None` for topics this gateway does not serve, or whose id breaks
    /// the id rule ([`TopicKind::read`] says why).
    pub fn parse(topic: &str) -> Option<Self> {
        Self::read(topic).ok().flatten()
    }

    /// Reads a topic name: `Ok(None)` for topics this gateway does not serve; an error for a
    /// served kind whose id breaks the id rule of every entry point ([`inbound::id`]). The id
    /// is taken as written (the channel is filed under its topic), so it must not need
    /// trimming either.
    pub fn read(topic: &str) -> Result<Option<Self>, DomainError> {
        let Some((kind, raw)) = topic.split_once(':') else {
            return Ok(None);
        };
        let field = match kind {
            "user" => "userId",
            "conversation" => "conversationId",
            _ => return Ok(None),
        };
        if raw.is_empty() {
            return Ok(None);
        }
        let id = inbound::id(field, raw)?;
        if id != raw {
            return Err(DomainError::BadRequest(format!(
                "{field} must not start or end with whitespace"
            )));
        }
        Ok(Some(match kind {
            "user" => Self::User(UserId::from(id)),
            _ => Self::Conversation(ConversationId::from(id)),
        }))
    }
}

/// What to do with one client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `heartbeat` on `phoenix`: acknowledge at once.
    Heartbeat,
    /// `phx_join` of a served topic; `replaces` is the join_ref of an earlier join of the same
    /// topic on this socket, which gets `phx_close`.
    Join {
        /// The topic.
        kind: TopicKind,
        /// The earlier join's ref, when the topic was joined already.
        replaces: Option<String>,
    },
    /// `phx_join` beyond [`MAX_CHANNELS`].
    TooManyChannels,
    /// `phx_join` of a served topic whose id breaks the id rule: an error reply.
    Refused(DomainError),
    /// `phx_leave`: reply ok, whether joined or not.
    Leave(Option<TopicKind>),
    /// An application event on a joined topic.
    Push(TopicKind),
    /// A topic this socket has not joined (or that does not exist): `unmatched topic`.
    Unmatched,
    /// A frame of an earlier join of the topic: dropped, as Phoenix does.
    Stale,
}

/// The joined topics of one socket, each with its join_ref: a vector, as a socket joins one or
/// two topics and at most [`MAX_CHANNELS`] (a map's table would cost more than the topics).
#[derive(Debug, Default)]
pub struct Channels {
    joined: Vec<(String, String)>,
}

impl Channels {
    /// Where `frame` goes, given what is joined now.
    pub fn route(&self, frame: &Frame) -> Route {
        if frame.is_heartbeat() {
            return Route::Heartbeat;
        }
        if frame.topic == PHOENIX_TOPIC {
            return Route::Unmatched;
        }
        let current = self.join_ref(&frame.topic);
        match frame.event.as_str() {
            "phx_join" => match TopicKind::read(&frame.topic) {
                Err(e) => Route::Refused(e),
                Ok(None) => Route::Unmatched,
                Ok(Some(_)) if current.is_none() && self.joined.len() >= MAX_CHANNELS => Route::TooManyChannels,
                Ok(Some(kind)) => Route::Join {
                    kind,
                    replaces: current.map(str::to_owned),
                },
            },
            "phx_leave" => Route::Leave(current.and_then(|_| TopicKind::parse(&frame.topic))),
            _ => match (current, &frame.join_ref) {
                (None, _) => Route::Unmatched,
                (Some(joined), Some(sent)) if joined != sent.as_str() => Route::Stale,
                (Some(_), _) => TopicKind::parse(&frame.topic).map_or(Route::Unmatched, Route::Push),
            },
        }
    }

    /// Records a successful join.
    pub fn joined(&mut self, topic: &str, join_ref: &str) {
        match self.joined.iter_mut().find(|(t, _)| t == topic) {
            Some((_, r)) => *r = join_ref.to_owned(),
            None => {
                if self.joined.len() == self.joined.capacity() && self.joined.len() < 4 {
                    self.joined.reserve_exact(1);
                }
                self.joined.push((topic.to_owned(), join_ref.to_owned()));
            }
        }
    }

    /// Forgets a topic; returns its join_ref when it was joined.
    pub fn left(&mut self, topic: &str) -> Option<String> {
        let at = self.joined.iter().position(|(t, _)| t == topic)?;
        Some(self.joined.swap_remove(at).1)
    }

    /// The join_ref of a joined topic.
    pub fn join_ref(&self, topic: &str) -> Option<&str> {
        self.joined.iter().find(|(t, _)| t == topic).map(|(_, r)| r.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::phoenix::decode;

    fn route(ch: &Channels, text: &str) -> Route {
        match decode(text) {
            Ok(frame) => ch.route(&frame),
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn join_push_leave_and_stale_frames() {
        let mut ch = Channels::default();
        assert_eq!(route(&ch, r#"[null,"1","phoenix","heartbeat",{}]"#), Route::Heartbeat);
        // Not joined yet: pushes are unmatched.
        assert_eq!(
            route(&ch, r#"["3","4","conversation:42","send_message",{}]"#),
            Route::Unmatched
        );
        assert_eq!(
            route(&ch, r#"["3","3","conversation:42","phx_join",{}]"#),
            Route::Join {
                kind: TopicKind::Conversation("42".into()),
                replaces: None
            }
        );
        ch.joined("conversation:42", "3");
        assert_eq!(
            route(&ch, r#"["3","5","conversation:42","send_message",{}]"#),
            Route::Push(TopicKind::Conversation("42".into()))
        );
        // A frame of an earlier join is dropped.
        assert_eq!(
            route(&ch, r#"["1","6","conversation:42","send_message",{}]"#),
            Route::Stale
        );
        // Joining again replaces the earlier join.
        assert_eq!(
            route(&ch, r#"["7","7","conversation:42","phx_join",{}]"#),
            Route::Join {
                kind: TopicKind::Conversation("42".into()),
                replaces: Some("3".into())
            }
        );
        assert_eq!(
            route(&ch, r#"["3","8","conversation:42","phx_leave",{}]"#),
            Route::Leave(Some(TopicKind::Conversation("42".into())))
        );
        assert_eq!(ch.left("conversation:42").as_deref(), Some("3"));
        // Leaving what is not joined still gets its ok.
        assert_eq!(
            route(&ch, r#"["3","9","conversation:42","phx_leave",{}]"#),
            Route::Leave(None)
        );
    }

    #[test]
    fn unknown_topics_and_events_on_phoenix_are_unmatched() {
        let ch = Channels::default();
        for text in [
            r#"["1","1","room:lobby","phx_join",{}]"#,
            r#"["1","1","user:","phx_join",{}]"#,
            r#"["1","1","conversation","phx_join",{}]"#,
            r#"[null,"2","phoenix","phx_join",{}]"#,
        ] {
            assert_eq!(route(&ch, text), Route::Unmatched, "{text}");
        }
    }

    /// Issue 12, item 7: a topic's id follows the id rule of REST and Socket.IO.
    #[test]
    fn topic_ids_follow_the_id_rule() {
        let ch = Channels::default();
        let long = format!(r#"["1","1","conversation:{}","phx_join",{{}}]"#, "x".repeat(490));
        let ctl = r#"["1","1","conversation:a\u0001b","phx_join",{}]"#;
        for text in [
            long.as_str(),
            ctl,
            r#"["1","1","conversation:   ","phx_join",{}]"#,
            r#"["1","1","conversation: 42","phx_join",{}]"#,
            r#"["1","1","user:al\nice","phx_join",{}]"#,
        ] {
            assert!(
                matches!(route(&ch, text), Route::Refused(DomainError::BadRequest(_))),
                "{}",
                &text[..text.len().min(60)]
            );
        }
        let ok = format!(r#"["1","1","conversation:{}","phx_join",{{}}]"#, "x".repeat(256));
        assert!(matches!(route(&ch, &ok), Route::Join { .. }));
    }

    #[test]
    fn at_most_a_hundred_channels() {
        let mut ch = Channels::default();
        for n in 0..MAX_CHANNELS {
            ch.joined(&format!("conversation:{n}"), &n.to_string());
        }
        assert_eq!(
            route(&ch, r#"["x","x","conversation:new","phx_join",{}]"#),
            Route::TooManyChannels
        );
        // Re-joining one already joined is still allowed.
        assert!(matches!(
            route(&ch, r#"["x","x","conversation:5","phx_join",{}]"#),
            Route::Join { replaces: Some(_), .. }
        ));
    }
}
