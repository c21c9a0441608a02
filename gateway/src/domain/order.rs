//! Seq order of one conversation's messages on this node.
//!
//! Messages are published by whichever task (on whichever node) stored them, as soon as the
//! store answered: two senders racing can publish seq 7 before seq 6, and Redis delivers them
//! in publication order. A client that sees 7 then 6, and later rejoins with its highest seq
//! as `lastSeq`, would never see 6 again. So each node releases a conversation's messages in
//! seq order: a message after a gap is held until the gap fills, or until [`GAP_WAIT`] has
//! passed, when the domain reads the gap from the store (the record) and fills it. Seqs are
//! given in commit order, so a hole below a seq the store has will never fill (a failed
//! append) and is skipped; a hole above what the store had is waited for again, at most
//! [`MAX_FILLS`] times.

use shared::{Delivery, Event};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a message after a gap waits for the gap to fill before the store is asked. Seqs
/// are given in commit order, so a gap is a publication in flight: milliseconds on one node,
/// a Redis round trip across nodes.
pub const GAP_WAIT: Duration = Duration::from_millis(200);

/// How many times one gap is read from the store before what is held goes out regardless.
pub const MAX_FILLS: u32 = 3;

/// Most messages held behind a gap; past it the gap is given up (the store fills it when it
/// can, the rest is skipped), so a lost publication never holds a conversation's memory.
pub const MAX_HELD: usize = 1024;

/// What [`SeqOrder::admit`] decided.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Messages to deliver now, in seq order.
    pub ready: Vec<Arc<Delivery>>,
    /// A gap opened: the caller schedules [`SeqOrder::fill`] after [`GAP_WAIT`].
    pub gap_opened: bool,
}

/// The release order of one conversation's messages.
#[derive(Debug, Default)]
pub struct SeqOrder {
    /// The highest seq released; `None` until the first message or a baseline.
    last: Option<i64>,
    /// Messages after a gap, by seq.
    held: BTreeMap<i64, Arc<Delivery>>,
    /// A fill is scheduled: a new gap does not schedule another.
    filling: bool,
}

/// The seq of a message event.
pub fn seq_of(delivery: &Delivery) -> Option<i64> {
    match &delivery.event {
        Event::MessageCreated(m) => Some(m.seq),
        _ => None,
    }
}

impl SeqOrder {
    /// The highest seq released.
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// Whether no message was released or baseline set yet.
    pub fn unsettled(&self) -> bool {
        self.last.is_none()
    }

    /// The highest seq stored when this node subscribed: messages up to it are history, not
    /// live. Ignored once messages were released.
    pub fn settle(&mut self, latest: i64) -> Vec<Arc<Delivery>> {
        if self.last.is_some() {
            return Vec::new();
        }
        self.last = Some(latest);
        self.held.retain(|seq, _| *seq > latest);
        self.release()
    }

    /// Takes one message in; returns what may go out now.
    pub fn admit(&mut self, delivery: Arc<Delivery>) -> Admitted {
        let Some(seq) = seq_of(&delivery) else {
            return Admitted {
                ready: vec![delivery],
                gap_opened: false,
            };
        };
        let Some(last) = self.last else {
            self.last = Some(seq);
            return Admitted {
                ready: vec![delivery],
                gap_opened: false,
            };
        };
        if seq <= last {
            // Released already: a duplicate, or a late arrival whose gap was given up on.
            return Admitted::default();
        }
        self.held.insert(seq, delivery);
        let mut ready = self.release();
        if self.held.len() > MAX_HELD {
            ready.extend(self.give_up());
        }
        let gap_opened = !self.held.is_empty() && !self.filling;
        self.filling |= gap_opened;
        Admitted { ready, gap_opened }
    }

    /// The seq after which the store should be read to fill the open gap; `None` when no gap
    /// is open, which also ends the scheduled fill.
    pub fn gap_after(&mut self) -> Option<i64> {
        if self.held.is_empty() {
            self.filling = false;
            return None;
        }
        self.last
    }

    /// The store's messages after [`Self::gap_after`]: they fill the gap; holes below the
    /// highest of them are skipped; with `last_try`, everything held goes out.
    pub fn fill(&mut self, found: Vec<Arc<Delivery>>, last_try: bool) -> Vec<Arc<Delivery>> {
        let last = self.last.unwrap_or(i64::MIN);
        let mut stored_up_to = last;
        for d in found {
            if let Some(seq) = seq_of(&d).filter(|s| *s > last) {
                stored_up_to = stored_up_to.max(seq);
                self.held.entry(seq).or_insert(d);
            }
        }
        if last_try {
            return self.give_up();
        }
        let mut ready = self.release();
        while let Some((&first, _)) = self.held.first_key_value()
            && first <= stored_up_to
        {
            self.last = Some(first - 1);
            ready.extend(self.release());
        }
        ready
    }

    /// Releases the held messages that follow `last` without a hole.
    fn release(&mut self) -> Vec<Arc<Delivery>> {
        let mut ready = Vec::new();
        while let Some(last) = self.last
            && let Some(entry) = self.held.first_entry()
            && *entry.key() == last + 1
        {
            let (seq, d) = entry.remove_entry();
            self.last = Some(seq);
            ready.push(d);
        }
        ready
    }

    /// Releases everything held, skipping the holes.
    fn give_up(&mut self) -> Vec<Arc<Delivery>> {
        let held = std::mem::take(&mut self.held);
        if let Some((&seq, _)) = held.last_key_value() {
            self.last = Some(seq);
        }
        held.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::Topic;
    use shared::event::Message;

    fn msg(seq: i64) -> Arc<Delivery> {
        Arc::new(Delivery::to(
            Topic::Conversation("c".into()),
            Event::MessageCreated(Message {
                id: format!("m{seq}"),
                conversation_id: "c".into(),
                sender_id: "u".into(),
                content: "x".into(),
                kind: "text".into(),
                attachments: Vec::new(),
                temp_id: None,
                seq,
                sent_at: chrono::Utc::now(),
                metadata: None,
            }),
        ))
    }

    fn seqs(ds: &[Arc<Delivery>]) -> Vec<i64> {
        ds.iter().filter_map(|d| seq_of(d)).collect()
    }

    #[test]
    fn releases_in_seq_order_and_drops_duplicates() {
        let mut o = SeqOrder::default();
        assert_eq!(seqs(&o.settle(4)), Vec::<i64>::new());
        let a = o.admit(msg(7));
        assert!(a.ready.is_empty() && a.gap_opened);
        let a = o.admit(msg(6));
        assert!(a.ready.is_empty() && !a.gap_opened, "the gap is still open (5)");
        assert_eq!(o.gap_after(), Some(4));
        assert_eq!(seqs(&o.admit(msg(5)).ready), vec![5, 6, 7]);
        assert_eq!(o.gap_after(), None);
        assert!(o.admit(msg(6)).ready.is_empty(), "a duplicate is dropped");
        assert!(o.admit(msg(3)).ready.is_empty(), "history is not live");
        assert_eq!(seqs(&o.admit(msg(8)).ready), vec![8]);
    }

    #[test]
    fn a_gap_is_filled_from_the_store_and_holes_are_skipped() {
        let mut o = SeqOrder::default();
        o.settle(0);
        assert_eq!(seqs(&o.admit(msg(1)).ready), vec![1]);
        assert!(o.admit(msg(4)).gap_opened);
        assert!(o.admit(msg(6)).ready.is_empty());
        // The store has 2 and 4: 3 was never stored, but 5 may still be in flight.
        assert_eq!(seqs(&o.fill(vec![msg(2), msg(4)], false)), vec![2, 4]);
        assert!(!o.admit(msg(8)).gap_opened, "a fill is already scheduled");
        assert_eq!(o.gap_after(), Some(4));
        assert_eq!(seqs(&o.admit(msg(5)).ready), vec![5, 6]);
        // 7 never comes: the last try lets 8 go.
        assert_eq!(seqs(&o.fill(Vec::new(), true)), vec![8]);
        assert_eq!(o.gap_after(), None);
        assert!(o.admit(msg(7)).ready.is_empty(), "too late: 8 went out");
        assert!(o.admit(msg(10)).gap_opened, "a new gap schedules a new fill");
    }

    #[test]
    fn the_first_message_of_an_unsettled_conversation_goes_out_and_other_events_pass() {
        let mut o = SeqOrder::default();
        assert!(o.unsettled());
        assert_eq!(seqs(&o.admit(msg(9)).ready), vec![9]);
        assert!(o.settle(20).is_empty(), "a baseline after a release is ignored");
        assert_eq!(seqs(&o.admit(msg(10)).ready), vec![10]);
        let typing = Arc::new(Delivery::to(
            Topic::Conversation("c".into()),
            Event::Typing(shared::event::Typing {
                conversation_id: "c".into(),
                user_id: "u".into(),
                is_typing: true,
            }),
        ));
        assert_eq!(o.admit(typing).ready.len(), 1);
    }

    #[test]
    fn held_messages_are_bounded() {
        let mut o = SeqOrder::default();
        o.settle(0);
        let mut out = 0;
        for seq in 2..=(MAX_HELD as i64 + 2) {
            out += o.admit(msg(seq)).ready.len();
        }
        assert_eq!(out, MAX_HELD + 1, "past the bound everything held goes out");
        assert_eq!(o.gap_after(), None);
    }
}
