//! A connection's inbox, and its worker run only while the inbox has work: an idle
//! connection holds no task besides its transport's, and no worker future (whose state is
//! sized for the largest domain call).
//!
//! The reader (the transport's callback) puts inputs in; a worker run takes them out one
//! after the other, so they run in arrival order, and ends when the inbox is empty, leaving
//! the worker's state behind for the next run. A full inbox (by count or by bytes) pauses
//! reading from the client — TCP backpressure, or a polling POST that waits — rather than
//! closing it or growing without bound.

use crate::domain::Domain;
use futures::FutureExt;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;
use tracing::Instrument;

/// Inputs a connection may have waiting for its worker; at this many, reading pauses.
pub const MAX_INPUTS: usize = 64;
/// Bytes of client frames a connection may have waiting; at this many, reading pauses.
pub const MAX_BYTES: usize = 1 << 20;
/// Inputs beyond which one that must not be lost (a removal) is refused: the caller closes
/// the connection instead.
const HARD_LIMIT: usize = 4 * MAX_INPUTS;

/// A connection's sequential command runner, as the runtime sees it.
pub trait Worker: Send + Sized + 'static {
    /// What the worker is asked to do: a client frame, or a decision of the domain.
    type Input: Send + 'static;
    /// Runs one input to its end. A command's panic is best caught where its error answer
    /// is written ([`super::guarded`]); one that escapes ends the connection
    /// ([`Worker::panicked`]).
    fn input(&mut self, input: Self::Input) -> impl Future<Output = ()> + Send;
    /// An input panicked: close the connection (its end still runs as usual).
    fn panicked(&self);
    /// The domain, whose task tracker runs the worker.
    fn domain(&self) -> &Arc<Domain>;
    /// The span a worker run is recorded under.
    fn span(&self) -> tracing::Span;
}

/// The transport's reading side, paused while the inbox is full.
pub trait Reading: Send + Sync {
    /// Stop reading client frames (after those already read).
    fn pause_reading(&self);
    /// Read again.
    fn resume_reading(&self);
}

struct State<W: Worker> {
    queue: VecDeque<(W::Input, usize)>,
    /// Bytes of the queued inputs.
    bytes: usize,
    /// The worker's state while no run holds it.
    worker: Option<W>,
    /// A worker run is under way.
    running: bool,
    /// Reading was paused for a full inbox.
    paused: bool,
    /// The connection closed: nothing more is queued.
    closed: bool,
}

/// One connection's ordered, bounded inbox.
pub struct Inbox<W: Worker, R: Reading> {
    state: Mutex<State<W>>,
    /// Told when a worker run ends, for the close to wait on.
    idle: Notify,
    reading: R,
}

impl<W: Worker, R: Reading + 'static> Inbox<W, R> {
    /// An inbox whose worker is given later ([`Inbox::set_worker`]): inputs queued before
    /// wait for it.
    pub fn new(reading: R) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                worker: None,
                running: false,
                paused: false,
                closed: false,
            }),
            idle: Notify::new(),
            reading,
        }
    }

    fn state(&self) -> MutexGuard<'_, State<W>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands the inbox its worker, and starts a run if inputs wait.
    pub fn set_worker(self: &Arc<Self>, worker: W) {
        let mut st = self.state();
        st.worker = Some(worker);
        if !st.queue.is_empty() {
            self.start(st);
        }
    }

    /// Queues a client frame of `bytes` bytes, starting a worker run if none is under way;
    /// pauses reading when the inbox is full.
    pub fn enqueue(self: &Arc<Self>, input: W::Input, bytes: usize) {
        let mut st = self.state();
        if st.closed {
            return;
        }
        st.queue.push_back((input, bytes));
        st.bytes += bytes;
        if (st.queue.len() >= MAX_INPUTS || st.bytes >= MAX_BYTES) && !st.paused {
            st.paused = true;
            self.reading.pause_reading();
        }
        self.start(st);
    }

    /// Queues an input that must not be lost behind the frames already queued (a join in
    /// flight must not win over a removal); `false` when the inbox is far over its bound,
    /// and the caller must close the connection instead.
    pub fn enqueue_forced(self: &Arc<Self>, input: W::Input) -> bool {
        let mut st = self.state();
        if st.closed {
            return true;
        }
        if st.queue.len() >= HARD_LIMIT {
            return false;
        }
        st.queue.push_back((input, 0));
        self.start(st);
        true
    }

    fn start(self: &Arc<Self>, mut st: MutexGuard<'_, State<W>>) {
        if st.running {
            return;
        }
        let Some(worker) = st.worker.take() else {
            return;
        };
        st.running = true;
        drop(st);
        let span = worker.span();
        let domain = worker.domain().clone();
        domain.spawn(self.clone().work(worker).instrument(span));
    }

    /// One worker run: the inputs, in order, until the inbox is empty.
    async fn work(self: Arc<Self>, mut worker: W) {
        loop {
            let input = {
                let mut st = self.state();
                let next = st.queue.pop_front();
                if let Some((_, bytes)) = &next {
                    st.bytes -= bytes;
                }
                if st.paused && st.queue.len() < MAX_INPUTS / 2 && st.bytes < MAX_BYTES / 2 {
                    st.paused = false;
                    self.reading.resume_reading();
                }
                match next {
                    Some((input, _)) => input,
                    None => {
                        // An idle connection keeps no buffer: most never queue again.
                        st.queue = VecDeque::new();
                        st.worker = Some(worker);
                        st.running = false;
                        drop(st);
                        self.idle.notify_one();
                        return;
                    }
                }
            };
            // Caught here so that the run always hands the worker back: the close waits on it.
            if AssertUnwindSafe(worker.input(input)).catch_unwind().await.is_err() {
                tracing::error!("connection worker panicked");
                worker.panicked();
            }
        }
    }

    /// After the connection closed: drops what is queued, waits for a run under way to
    /// finish its input, and returns the worker's state for its last words.
    pub async fn stop(&self) -> Option<W> {
        loop {
            let idle = self.idle.notified();
            {
                let mut st = self.state();
                st.closed = true;
                st.queue.clear();
                st.bytes = 0;
                if !st.running {
                    return st.worker.take();
                }
            }
            idle.await;
        }
    }
}
