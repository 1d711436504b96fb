//! A least-recently-used cache bounded by bytes, not by entries: the runner
//! keeps recently routed MoE experts of streamed layers in what the memory
//! plan leaves for them.

use std::collections::HashMap;
use std::hash::Hash;

/// Values with a size in bytes; the least recently used go first when a new
/// one would take the total past the budget.
#[derive(Debug)]
pub struct ByteLru<K, V> {
    budget: u64,
    used: u64,
    tick: u64,
    /// Key → (value, last use, size).
    held: HashMap<K, (V, u64, u64)>,
}

impl<K: Hash + Eq + Copy, V> ByteLru<K, V> {
    /// An empty cache that holds at most `budget` bytes.
    pub fn new(budget: u64) -> ByteLru<K, V> {
        ByteLru {
            budget,
            used: 0,
            tick: 0,
            held: HashMap::new(),
        }
    }

    /// The value of `key`, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.tick += 1;
        let tick = self.tick;
        self.held.get_mut(key).map(|entry| {
            entry.1 = tick;
            &entry.0
        })
    }

    /// Keeps `value` (of `size` bytes) under `key`, evicting the least recently
    /// used values until it fits; a value larger than the whole budget is not
    /// kept. Returns whether it was kept.
    pub fn insert(&mut self, key: K, value: V, size: u64) -> bool {
        if size > self.budget {
            return false;
        }
        if let Some((_, _, old)) = self.held.remove(&key) {
            self.used -= old;
        }
        while self.used + size > self.budget {
            let Some(oldest) = self.held.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k) else {
                break;
            };
            if let Some((_, _, freed)) = self.held.remove(&oldest) {
                self.used -= freed;
            }
        }
        self.tick += 1;
        self.used += size;
        self.held.insert(key, (value, self.tick, size));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_the_byte_budget() {
        let mut c: ByteLru<u32, &str> = ByteLru::new(100);
        assert!(c.insert(1, "a", 40));
        assert!(c.insert(2, "b", 40));
        assert_eq!(c.used, 80);
        // Using 1 makes 2 the oldest: a 30-byte value evicts 2 only.
        assert_eq!(c.get(&1), Some(&"a"));
        assert!(c.insert(3, "c", 30));
        assert!(c.held.contains_key(&1) && !c.held.contains_key(&2) && c.held.contains_key(&3));
        assert_eq!(c.used, 70);
        // 90 bytes need both 1 and 3 gone.
        assert!(c.insert(4, "d", 90));
        assert!(!c.held.contains_key(&1) && !c.held.contains_key(&3));
        assert_eq!(c.used, 90);
        // Larger than the budget: not kept, nothing evicted.
        assert!(!c.insert(5, "e", 101));
        assert!(c.held.contains_key(&4) && !c.held.contains_key(&5));
        // Replacing a key counts its new size only.
        assert!(c.insert(4, "d2", 10));
        assert_eq!((c.used, c.get(&4)), (10, Some(&"d2")));
        assert_eq!(c.get(&2), None);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let mut c: ByteLru<(usize, usize), u8> = ByteLru::new(0);
        assert!(!c.insert((0, 1), 7, 1));
        assert!(c.insert((0, 2), 8, 0));
        assert_eq!(c.used, 0);
    }
}
