//! A topic's connections by key. Most topics hold one or two (a user's own topic; a small
//! conversation), a few hold thousands: up to [`FEW`] live in a vector, which for one entry
//! costs a fraction of a hash map's table, and more in a map.

use super::ConnKey;
use std::collections::HashMap;

/// Past this many entries, lookups go through a map rather than a scan.
const FEW: usize = 8;

/// Connections by key, small or large.
pub(super) enum Keyed<V> {
    Few(Vec<(ConnKey, V)>),
    Many(HashMap<ConnKey, V>),
}

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Keyed::Few(Vec::new())
    }
}

/// Appends to a vector that most often stays short: it grows one slot at a time up to four,
/// then as usual, so that one or two items take the room of one or two.
pub(super) fn push_small<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() && v.len() < 4 {
        v.reserve_exact(1);
    }
    v.push(item);
}

impl<V> Keyed<V> {
    pub(super) fn len(&self) -> usize {
        match self {
            Keyed::Few(v) => v.len(),
            Keyed::Many(m) => m.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn contains_key(&self, key: ConnKey) -> bool {
        match self {
            Keyed::Few(v) => v.iter().any(|(k, _)| *k == key),
            Keyed::Many(m) => m.contains_key(&key),
        }
    }

    pub(super) fn get_mut(&mut self, key: ConnKey) -> Option<&mut V> {
        match self {
            Keyed::Few(v) => v.iter_mut().find(|(k, _)| *k == key).map(|(_, v)| v),
            Keyed::Many(m) => m.get_mut(&key),
        }
    }

    /// Files `value` under `key`, replacing what was there.
    pub(super) fn insert(&mut self, key: ConnKey, value: V) {
        if let Some(slot) = self.get_mut(key) {
            *slot = value;
            return;
        }
        match self {
            Keyed::Few(v) if v.len() < FEW => push_small(v, (key, value)),
            Keyed::Few(v) => {
                let mut m: HashMap<ConnKey, V> = std::mem::take(v).into_iter().collect();
                m.insert(key, value);
                *self = Keyed::Many(m);
            }
            Keyed::Many(m) => {
                m.insert(key, value);
            }
        }
    }

    pub(super) fn remove(&mut self, key: ConnKey) -> Option<V> {
        match self {
            Keyed::Few(v) => {
                let at = v.iter().position(|(k, _)| *k == key)?;
                Some(v.swap_remove(at).1)
            }
            Keyed::Many(m) => {
                let removed = m.remove(&key);
                // A map keeps its table as it empties: a topic that shrank to a few goes back
                // to a vector (at half the bound, so that one join and leave do not flip it).
                if m.len() <= FEW / 2 {
                    let few: Vec<(ConnKey, V)> = std::mem::take(m).into_iter().collect();
                    *self = Keyed::Few(few);
                }
                removed
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (ConnKey, &V)> {
        let (few, many) = match self {
            Keyed::Few(v) => (Some(v), None),
            Keyed::Many(m) => (None, Some(m)),
        };
        let few = few.into_iter().flatten().map(|(k, v)| (*k, v));
        few.chain(many.into_iter().flatten().map(|(k, v)| (*k, v)))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        let (few, many) = match self {
            Keyed::Few(v) => (Some(v), None),
            Keyed::Many(m) => (None, Some(m)),
        };
        let few = few.into_iter().flatten().map(|(_, v)| v);
        few.chain(many.into_iter().flat_map(|m| m.values_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_map_and_back() {
        let mut k: Keyed<u64> = Keyed::default();
        for key in 0..20 {
            k.insert(key, key * 10);
        }
        assert!(matches!(k, Keyed::Many(_)));
        assert_eq!(k.len(), 20);
        k.insert(3, 33);
        assert_eq!(k.len(), 20);
        assert_eq!(k.get_mut(3).copied(), Some(33));
        for key in 0..17 {
            assert!(k.remove(key).is_some());
        }
        assert!(matches!(k, Keyed::Few(_)));
        let mut left: Vec<(ConnKey, u64)> = k.iter().map(|(key, v)| (key, *v)).collect();
        left.sort_unstable();
        assert_eq!(left, vec![(17, 170), (18, 180), (19, 190)]);
        assert!(k.remove(17).is_some() && k.remove(18).is_some() && k.remove(19).is_some());
        assert!(k.is_empty() && k.remove(19).is_none());
    }

    #[test]
    fn one_entry_takes_one_slot() {
        let mut k: Keyed<u64> = Keyed::default();
        k.insert(1, 1);
        let Keyed::Few(v) = &k else { panic!("a vector for one") };
        assert_eq!(v.capacity(), 1);
    }
}
