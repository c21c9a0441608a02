//! Local connections filed under keys (a room, a topic, a user), for delivery. Both protocol
//! adapters keep their sockets in these.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock};

/// A connection that can be filed: its id is unique on the node.
pub trait Indexed {
    fn index_id(&self) -> u64;
}

/// Connections by key.
pub struct Index<K, V> {
    map: RwLock<HashMap<K, HashMap<u64, Arc<V>>>>,
}

impl<K, V> Default for Index<K, V> {
    fn default() -> Self {
        Self { map: RwLock::default() }
    }
}

impl<K: Eq + Hash, V: Indexed> Index<K, V> {
    pub fn add(&self, key: K, v: &Arc<V>) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(key).or_default().insert(v.index_id(), v.clone());
    }

    pub fn remove<Q>(&self, key: &Q, id: u64)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = map.get_mut(key) {
            entries.remove(&id);
            if entries.is_empty() {
                map.remove(key);
            }
        }
    }

    pub fn contains<Q>(&self, key: &Q, id: u64) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key).is_some_and(|s| s.contains_key(&id))
    }

    pub fn get<Q>(&self, key: &Q) -> Vec<Arc<V>>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key).map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    pub fn all(&self) -> Vec<Arc<V>> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.values().flat_map(|s| s.values().cloned()).collect()
    }
}
