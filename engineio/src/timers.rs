//! One timer task for many connections: the heartbeats of WebSocket sessions and the idle
//! timeouts of plain WebSockets.
//!
//! A tokio `Sleep` in each connection's task cost that task ≈ 100 bytes and one wake-up per
//! deadline, most of which only find that the deadline moved (a pong, a frame). Here a
//! connection sits in the slot of its next deadline, rounded up to a tick; one task wakes per
//! non-empty slot, visits its connections and files each under the deadline the visit
//! returns. A deadline that moves in between costs nothing until its old slot comes: the
//! connection's own state says whether it is due, and the wheel only asks.
//!
//! The wheel holds its connections weakly and never searches its slots: a closed connection
//! is dropped, but its allocation is freed only when its slot comes (at most an interval, or
//! an idle timeout, later). Under a reconnect storm that is the closed connections of one
//! interval, a few hundred bytes each.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// What the wheel does with a connection whose slot came: its next deadline, or `None` when
/// the wheel is done with it (it closed, or was closed by the visit).
pub(crate) type Visit<T> = Box<dyn Fn(&T, Instant) -> Option<Instant> + Send + Sync>;

/// Connections by the tick of their next deadline.
pub(crate) struct Wheel<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    tick: Duration,
    origin: Instant,
    visit: Visit<T>,
    slots: Mutex<Slots<T>>,
    /// Wakes the task: a slot earlier than the one it sleeps until was filled.
    earlier: Notify,
}

struct Slots<T> {
    by_tick: BTreeMap<u64, Vec<Weak<T>>>,
    /// The tick the task sleeps until; `None` while it waits for a first entry.
    sleeping_until: Option<u64>,
    task: Option<AbortHandle>,
}

impl<T: Send + Sync + 'static> Wheel<T> {
    /// A wheel whose deadlines are kept to `tick` (rounded up: a deadline is never early).
    pub(crate) fn new(tick: Duration, visit: Visit<T>) -> Self {
        Self {
            shared: Arc::new(Shared {
                tick: tick.max(Duration::from_millis(1)),
                origin: Instant::now(),
                visit,
                slots: Mutex::new(Slots {
                    by_tick: BTreeMap::new(),
                    sleeping_until: None,
                    task: None,
                }),
                earlier: Notify::new(),
            }),
        }
    }

    /// Visits `entry` at `at` (within a tick after it). The wheel holds it weakly: a
    /// connection dropped meanwhile is skipped. Must run inside a tokio runtime (the wheel's
    /// task starts with its first entry).
    pub(crate) fn insert(&self, entry: &Arc<T>, at: Instant) {
        let tick = self.shared.tick_of(at);
        let mut slots = self.shared.slots();
        slots.by_tick.entry(tick).or_default().push(Arc::downgrade(entry));
        if slots.task.as_ref().is_none_or(AbortHandle::is_finished) {
            if slots.task.is_some() {
                // Only a panic in a visit ends it: keep the deadlines of the others.
                tracing::warn!("a timer wheel's task ended; restarted");
            }
            slots.task = Some(tokio::spawn(run(self.shared.clone())).abort_handle());
        }
        if slots.sleeping_until.is_none_or(|until| tick < until) {
            drop(slots);
            self.shared.earlier.notify_one();
        }
    }
}

impl<T> Drop for Wheel<T> {
    fn drop(&mut self) {
        if let Some(task) = self.shared.slots().task.take() {
            task.abort();
        }
    }
}

impl<T> Shared<T> {
    fn slots(&self) -> MutexGuard<'_, Slots<T>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first tick at or after `at`: a deadline's slot (never early).
    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since.div_ceil(self.tick.as_nanos())).unwrap_or(u64::MAX)
    }

    /// The last tick at or before `now`: the slots up to it are due.
    fn ticks_passed(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / self.tick.as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant_of(&self, tick: u64) -> Instant {
        let nanos = self.tick.as_nanos().saturating_mul(u128::from(tick));
        after(
            self.origin,
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)),
        )
    }
}

/// `from + by`, or a year from now where that overflows (a configured timeout of
/// `Duration::MAX` means never).
pub(crate) fn after(from: Instant, by: Duration) -> Instant {
    from.checked_add(by)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
}

/// The wheel's task: sleeps until the first filled slot, visits what is due, files the
/// entries again under their next deadlines. Ends when the wheel is dropped (it aborts it).
async fn run<T>(wheel: Arc<Shared<T>>) {
    let mut due = Vec::new();
    loop {
        let now = Instant::now();
        let now_tick = wheel.ticks_passed(now);
        {
            let mut slots = wheel.slots();
            // Every slot up to now: the later ones stay.
            let later = slots.by_tick.split_off(&now_tick.saturating_add(1));
            let past = std::mem::replace(&mut slots.by_tick, later);
            due.extend(past.into_values().flatten());
        }
        for entry in due.drain(..).filter_map(|w| w.upgrade()) {
            if let Some(at) = (wheel.visit)(&entry, now) {
                let tick = wheel.tick_of(at).max(now_tick.saturating_add(1));
                wheel
                    .slots()
                    .by_tick
                    .entry(tick)
                    .or_default()
                    .push(Arc::downgrade(&entry));
            }
        }
        // Give back what a storm of visits grew.
        if due.capacity() > 1024 {
            due = Vec::new();
        }
        let earlier = wheel.earlier.notified();
        tokio::pin!(earlier);
        let next = {
            let mut slots = wheel.slots();
            let first = slots.by_tick.first_key_value().map(|(tick, _)| *tick);
            slots.sleeping_until = first;
            // Registered before the lock is let go: an insert after it wakes this task.
            earlier.as_mut().enable();
            first
        };
        match next {
            Some(tick) => {
                tokio::select! {
                    () = tokio::time::sleep_until(wheel.instant_of(tick)) => {}
                    () = &mut earlier => {}
                }
            }
            None => earlier.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connection that records when it was visited, due again `every` until `times` visits.
    struct Probe {
        visits: Mutex<Vec<Instant>>,
        every: Duration,
        times: usize,
    }

    fn probe(every: Duration, times: usize) -> Arc<Probe> {
        Arc::new(Probe {
            visits: Mutex::default(),
            every,
            times,
        })
    }

    fn wheel(tick: Duration) -> Wheel<Probe> {
        Wheel::new(
            tick,
            Box::new(|p: &Probe, now| {
                let mut visits = p.visits.lock().unwrap_or_else(PoisonError::into_inner);
                visits.push(now);
                (visits.len() < p.times).then(|| now + p.every)
            }),
        )
    }

    fn visits(p: &Probe) -> Vec<Instant> {
        p.visits.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    #[tokio::test(start_paused = true)]
    async fn visits_at_each_deadline_within_a_tick_never_before() {
        let tick = Duration::from_millis(10);
        let w = wheel(tick);
        let p = probe(Duration::from_millis(100), 3);
        let start = Instant::now();
        w.insert(&p, start + Duration::from_millis(55));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(visits(&p).is_empty(), "visited before its deadline");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seen = visits(&p);
        assert_eq!(seen.len(), 3, "three visits, then the visit said it was done");
        let mut expected = start + Duration::from_millis(55);
        for at in seen {
            assert!(
                at >= expected && at < expected + tick + Duration::from_millis(1),
                "{at:?} vs {expected:?}"
            );
            expected = at + Duration::from_millis(100);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_wake_up_takes_only_the_slots_that_passed() {
        let w = wheel(Duration::from_millis(10));
        let due = probe(Duration::ZERO, 1);
        let next = probe(Duration::ZERO, 1);
        let start = Instant::now();
        w.insert(&due, start + Duration::from_millis(55));
        w.insert(&next, start + Duration::from_millis(65));
        // The task wakes 3 ms after the first slot (60 ms), as a busy runtime would.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(63)).await;
        tokio::task::yield_now().await;
        assert_eq!(visits(&due).len(), 1);
        assert!(visits(&next).is_empty(), "the 70 ms slot was taken at 63 ms");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(visits(&next).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_connection_is_not_visited() {
        let visited = Arc::new(AtomicUsize::new(0));
        let counter = visited.clone();
        let w: Wheel<Probe> = Wheel::new(
            Duration::from_millis(10),
            Box::new(move |_, _| {
                counter.fetch_add(1, Ordering::Relaxed);
                None
            }),
        );
        let kept = probe(Duration::ZERO, 1);
        let dropped = probe(Duration::ZERO, 1);
        w.insert(&kept, Instant::now() + Duration::from_millis(20));
        w.insert(&dropped, Instant::now() + Duration::from_millis(20));
        drop(dropped);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(visited.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_wakes_the_sleeping_task() {
        let w = wheel(Duration::from_millis(10));
        let late = probe(Duration::ZERO, 1);
        let early = probe(Duration::ZERO, 1);
        let start = Instant::now();
        w.insert(&late, start + Duration::from_secs(10));
        // The task is asleep until the late one's slot.
        tokio::time::sleep(Duration::from_millis(5)).await;
        w.insert(&early, start + Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen = visits(&early);
        assert_eq!(seen.len(), 1, "the early deadline was kept");
        assert!(seen[0] < start + Duration::from_millis(111));
        assert!(visits(&late).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_wheel_stops_its_task() {
        let w = wheel(Duration::from_millis(10));
        let p = probe(Duration::from_millis(10), usize::MAX);
        w.insert(&p, Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = visits(&p).len();
        assert!(before >= 4);
        drop(w);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(visits(&p).len(), before);
    }
}
