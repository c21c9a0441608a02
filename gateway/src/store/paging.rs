//! How a [`HistoryQuery`] becomes a page, for every store: the store reads the rows of a
//! [`Window`] in its order, and [`Window::page`] turns them into the [`HistoryPage`], so the
//! limits, `has_more` and the page's order are decided here once.

use super::{HistoryPage, HistoryQuery};
use shared::event::Message;

/// The rows a store reads for one page: seqs strictly between `after` and `before`, in the
/// window's order, at most [`Window::fetch`] of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Only seqs above this (0: from the first message).
    pub(crate) after: i64,
    /// Only seqs below this.
    pub(crate) before: i64,
    /// Read oldest first: with `after` the page grows forward from it. Otherwise newest first,
    /// backward from `before` (or from the newest message).
    pub(crate) forward: bool,
    /// The page's size; a zero limit would answer nothing and `has_more` forever, so it counts
    /// as one.
    limit: i64,
}

impl Window {
    pub(crate) fn of(query: HistoryQuery) -> Self {
        Self {
            after: query.after.unwrap_or(0),
            before: query.before.unwrap_or(i64::MAX),
            forward: query.after.is_some(),
            limit: i64::from(query.limit.max(1)),
        }
    }

    /// How many rows to read: one more than the page holds tells whether more exist.
    pub(crate) fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The page of `rows` (read in the window's order, at most [`Window::fetch`]), oldest first.
    pub(crate) fn page<R, E>(&self, rows: Vec<R>, read: impl FnMut(R) -> Result<Message, E>) -> Result<HistoryPage, E> {
        let has_more = rows.len() as i64 > self.limit;
        let mut messages = rows
            .into_iter()
            .take(usize::try_from(self.limit).unwrap_or(usize::MAX))
            .map(read)
            .collect::<Result<Vec<_>, E>>()?;
        if !self.forward {
            messages.reverse();
        }
        Ok(HistoryPage { messages, has_more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::new_message;
    use std::convert::Infallible;

    fn message(seq: i64) -> Result<Message, Infallible> {
        Ok(new_message("c", "alice", "x", None).stored(format!("m{seq}"), seq, 0))
    }

    fn seqs(page: &HistoryPage) -> Vec<i64> {
        page.messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn a_query_becomes_a_window() {
        let q = |before, after, limit| Window::of(HistoryQuery { before, after, limit });
        let newest = q(None, None, 0);
        assert_eq!(
            (newest.after, newest.before, newest.forward, newest.fetch()),
            (0, i64::MAX, false, 2)
        );
        let forward = q(Some(9), Some(3), 50);
        assert_eq!(
            (forward.after, forward.before, forward.forward, forward.fetch()),
            (3, 9, true, 51)
        );
        assert!(!q(Some(9), None, 5).forward);
    }

    #[test]
    fn pages_are_oldest_first_and_tell_whether_more_exist() -> Result<(), Infallible> {
        let backward = Window::of(HistoryQuery {
            before: None,
            after: None,
            limit: 2,
        });
        // Read newest first: 10, 9, and one more.
        let page = backward.page(vec![10, 9, 8], message)?;
        assert_eq!((seqs(&page), page.has_more), (vec![9, 10], true));
        let page = backward.page(vec![2, 1], message)?;
        assert_eq!((seqs(&page), page.has_more), (vec![1, 2], false));
        let forward = Window::of(HistoryQuery {
            before: None,
            after: Some(0),
            limit: 2,
        });
        let page = forward.page(vec![1, 2, 3], message)?;
        assert_eq!((seqs(&page), page.has_more), (vec![1, 2], true));
        let page = forward.page(Vec::new(), message)?;
        assert_eq!((seqs(&page), page.has_more), (vec![], false));
        Ok(())
    }
}
