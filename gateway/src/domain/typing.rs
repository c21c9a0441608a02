//! Typing indicators that expire: a start with no stop or new start within
//! [`TYPING_TIMEOUT`] ends with a stop sent on the typer's behalf.
//!
//! One task owns one timer wheel for the whole node, so an indicator costs a map entry, not a
//! task or a timer of its own.

use crate::bus::Bus;
use futures::StreamExt;
use shared::event::Typing;
use shared::{ConversationId, Delivery, Event, Topic, UserId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};

/// How long a typing indicator lasts without a new start (PROTOCOL.md 2.2).
pub const TYPING_TIMEOUT: Duration = Duration::from_secs(8);

type Key = (ConversationId, UserId);

enum Command {
    /// (Re)arm the timer.
    Start(Key),
    /// Disarm silently: the typer sent a stop, which the domain already published.
    Cancel(Key),
    /// Disarm and publish a stop if one was pending (the typer left or disconnected).
    Finish(Key),
}

/// Handle to the node's typing timers.
#[derive(Clone)]
pub struct TypingTimers {
    tx: mpsc::UnboundedSender<Command>,
}

impl TypingTimers {
    /// Starts the timer task; it publishes expiries on `bus` and ends with `shutdown`.
    pub fn spawn(bus: Arc<dyn Bus>, shutdown: CancellationToken, tasks: &tokio_util::task::TaskTracker) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.spawn(run(rx, bus, shutdown));
        Self { tx }
    }

    /// A start: the indicator stops by itself after [`TYPING_TIMEOUT`].
    pub fn start(&self, conversation: ConversationId, user: UserId) {
        let _ = self.tx.send(Command::Start((conversation, user)));
    }

    /// An explicit stop.
    pub fn cancel(&self, conversation: ConversationId, user: UserId) {
        let _ = self.tx.send(Command::Cancel((conversation, user)));
    }

    /// The typer is gone from the conversation: stop now if they were typing.
    pub fn finish(&self, conversation: ConversationId, user: UserId) {
        let _ = self.tx.send(Command::Finish((conversation, user)));
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Command>, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
    let mut queue: DelayQueue<Key> = DelayQueue::new();
    let mut armed: HashMap<Key, delay_queue::Key> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Command::Start(key)) => match armed.get(&key) {
                    Some(slot) => queue.reset(slot, TYPING_TIMEOUT),
                    None => {
                        let slot = queue.insert(key.clone(), TYPING_TIMEOUT);
                        armed.insert(key, slot);
                    }
                },
                Some(Command::Cancel(key)) => {
                    if let Some(slot) = armed.remove(&key) {
                        queue.remove(&slot);
                    }
                }
                Some(Command::Finish(key)) => {
                    if let Some(slot) = armed.remove(&key) {
                        queue.remove(&slot);
                        publish_stop(bus.as_ref(), key).await;
                    }
                }
            },
            Some(expired) = queue.next(), if !queue.is_empty() => {
                let key = expired.into_inner();
                armed.remove(&key);
                publish_stop(bus.as_ref(), key).await;
            }
        }
    }
}

async fn publish_stop(bus: &dyn Bus, (conversation_id, user_id): Key) {
    let delivery = Delivery::to(
        Topic::Conversation(conversation_id.clone()),
        Event::Typing(Typing {
            conversation_id,
            user_id: user_id.clone(),
            is_typing: false,
        }),
    )
    .except(user_id);
    if let Err(e) = bus.publish(delivery).await {
        tracing::debug!(error = %e, "typing stop not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MemoryBus;
    use crate::bus::tests::Recorder;
    use tokio_util::task::TaskTracker;

    #[tokio::test(start_paused = true)]
    async fn a_start_without_stop_expires_after_eight_seconds() -> Result<(), crate::bus::BusError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(Arc::new(Recorder(tx))));
        bus.subscribe(&Topic::Conversation("c".into())).await?;
        let timers = TypingTimers::spawn(bus, CancellationToken::new(), &TaskTracker::new());

        timers.start("c".into(), "alice".into());
        tokio::time::sleep(Duration::from_secs(6)).await;
        // A new start re-arms the timer: nothing at 8 s from the first start.
        timers.start("c".into(), "alice".into());
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(rx.try_recv().is_err());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stop = rx.try_recv().map(|d| d.event.clone()).ok();
        assert_eq!(
            stop,
            Some(Event::Typing(Typing {
                conversation_id: "c".into(),
                user_id: "alice".into(),
                is_typing: false
            }))
        );

        // An explicit stop disarms; a finish publishes only when armed.
        timers.start("c".into(), "bob".into());
        timers.cancel("c".into(), "bob".into());
        timers.finish("c".into(), "bob".into());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(rx.try_recv().is_err());
        timers.start("c".into(), "bob".into());
        timers.finish("c".into(), "bob".into());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(rx.try_recv().is_ok());
        Ok(())
    }
}
