//! Typing indicators that expire: a start with no stop or new start within
//! [`TYPING_TIMEOUT`] ends with a stop sent on the typer's behalf.
//!
//! One task owns one timer wheel for the whole node, so an indicator costs a map entry, not a
//! task or a timer of its own. Both ends are bounded: the command queue (a full queue drops the
//! command rather than grow without limit) and the stops waiting to be published, of which
//! several are in flight at once so that a slow PUBLISH delays no other expiry.

use crate::bus::Bus;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use shared::event::Typing;
use shared::{ConversationId, Delivery, Event, Topic, UserId};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};

/// How long a typing indicator lasts without a new start (PROTOCOL.md 2.2).
pub const TYPING_TIMEOUT: Duration = Duration::from_secs(8);
/// Commands waiting for the timer task.
const COMMAND_QUEUE: usize = 8192;
/// Stops waiting to be published; beyond this the oldest is dropped.
const PENDING_STOPS: usize = 8192;
/// Stops published at once.
const IN_FLIGHT: usize = 32;

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
    tx: mpsc::Sender<Command>,
}

impl TypingTimers {
    /// Starts the timer task; it publishes expiries on `bus` and ends with `shutdown`.
    pub fn spawn(bus: Arc<dyn Bus>, shutdown: CancellationToken, tasks: &tokio_util::task::TaskTracker) -> Self {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        tasks.spawn(run(rx, bus, shutdown));
        Self { tx }
    }

    fn send(&self, command: Command) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(command) {
            // Only a timer task stalled for thousands of commands gets here; an indicator then
            // ends with the client's own timeout.
            tracing::warn!("typing timers overloaded; a typing command was dropped");
        }
    }

    /// A start: the indicator stops by itself after [`TYPING_TIMEOUT`].
    pub fn start(&self, conversation: ConversationId, user: UserId) {
        self.send(Command::Start((conversation, user)));
    }

    /// An explicit stop.
    pub fn cancel(&self, conversation: ConversationId, user: UserId) {
        self.send(Command::Cancel((conversation, user)));
    }

    /// The typer is gone from the conversation: stop now if they were typing.
    pub fn finish(&self, conversation: ConversationId, user: UserId) {
        self.send(Command::Finish((conversation, user)));
    }
}

async fn run(mut rx: mpsc::Receiver<Command>, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
    let mut queue: DelayQueue<Key> = DelayQueue::new();
    let mut armed: HashMap<Key, delay_queue::Key> = HashMap::new();
    let mut pending: VecDeque<Key> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < IN_FLIGHT
            && let Some(key) = pending.pop_front()
        {
            in_flight.push(publish_stop(bus.as_ref(), key));
        }
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
                        queue_stop(&mut pending, key);
                    }
                }
            },
            Some(expired) = queue.next(), if !queue.is_empty() => {
                let key = expired.into_inner();
                armed.remove(&key);
                queue_stop(&mut pending, key);
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
}

fn queue_stop(pending: &mut VecDeque<Key>, key: Key) {
    if pending.len() >= PENDING_STOPS {
        pending.pop_front();
        tracing::warn!("typing stops are not published fast enough; one was dropped");
    }
    pending.push_back(key);
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

    /// A bus whose every publish takes a second.
    struct SlowBus(mpsc::UnboundedSender<Delivery>);

    #[async_trait::async_trait]
    impl Bus for SlowBus {
        async fn publish(&self, delivery: Delivery) -> Result<(), crate::bus::BusError> {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = self.0.send(delivery);
            Ok(())
        }
        async fn subscribe(&self, _: &Topic) -> Result<(), crate::bus::BusError> {
            Ok(())
        }
        async fn unsubscribe(&self, _: &Topic) -> Result<(), crate::bus::BusError> {
            Ok(())
        }
    }

    /// A slow PUBLISH delays no other expiry: twenty indicators that expire together are all
    /// stopped one publish later, not one after another.
    #[tokio::test(start_paused = true)]
    async fn a_slow_publish_does_not_delay_the_other_stops() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let timers = TypingTimers::spawn(Arc::new(SlowBus(tx)), CancellationToken::new(), &TaskTracker::new());
        for n in 0..20 {
            timers.start("c".into(), format!("u{n}").into());
        }
        tokio::time::sleep(TYPING_TIMEOUT + Duration::from_millis(1500)).await;
        let mut stopped = 0;
        while rx.try_recv().is_ok() {
            stopped += 1;
        }
        assert_eq!(stopped, 20);
    }
}
