//! Which cached objects a zone keeps within its budget on a node: S3-FIFO
//! (Yang et al., SOSP 2023), so that a scan of one-hit wonders does not push
//! out the objects people keep asking for.
//!
//! New objects enter a small FIFO (a tenth of the budget). Leaving it, an
//! object asked for again while there moves to the main FIFO; one that was not
//! is dropped and remembered in a ghost list (keys only), and if it comes back
//! while remembered it goes straight to the main FIFO. Leaving the main FIFO,
//! an object asked for since it last passed is put back at the head with one
//! request less to its credit; one that was not is dropped.
//!
//! Request counts are the caller's (an atomic per object, bumped on the core
//! at each hit, at most [`MAX_FREQ`]); this structure only orders keys, and is
//! touched only where objects are stored or dropped (off the core).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// Requests counted per object (two bits' worth, as in the paper).
pub const MAX_FREQ: u8 = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    Small,
    Main,
}

/// A zone's objects in S3-FIFO order, within `budget` bytes.
pub struct S3Fifo<K> {
    budget: u64,
    small: VecDeque<K>,
    main: VecDeque<K>,
    /// Where each held key is, and its size (queues may hold stale keys,
    /// skipped when they come up).
    held: HashMap<K, (Queue, u64)>,
    small_bytes: u64,
    main_bytes: u64,
    ghost: VecDeque<K>,
    ghosts: HashSet<K>,
    ghost_cap: usize,
}

impl<K: Hash + Eq + Copy> S3Fifo<K> {
    pub fn new(budget: u64) -> S3Fifo<K> {
        S3Fifo {
            budget,
            small: VecDeque::new(),
            main: VecDeque::new(),
            held: HashMap::new(),
            small_bytes: 0,
            main_bytes: 0,
            ghost: VecDeque::new(),
            ghosts: HashSet::new(),
            ghost_cap: 4096,
        }
    }

    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    pub fn bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    #[cfg(test)]
    pub fn contains(&self, key: &K) -> bool {
        self.held.contains_key(key)
    }

    /// Takes `key` of `size` bytes (again, if held: its size is updated in
    /// place); returns the keys dropped to stay within the budget. `freq`
    /// reads an object's request count, `spend` takes one from it.
    pub fn insert(
        &mut self,
        key: K,
        size: u64,
        freq: &dyn Fn(&K) -> u8,
        spend: &dyn Fn(&K),
    ) -> Vec<K> {
        if let Some((q, old)) = self.held.get_mut(&key) {
            let bytes = match q {
                Queue::Small => &mut self.small_bytes,
                Queue::Main => &mut self.main_bytes,
            };
            *bytes = *bytes - *old + size;
            *old = size;
        } else if self.ghosts.remove(&key) {
            self.held.insert(key, (Queue::Main, size));
            self.main.push_front(key);
            self.main_bytes += size;
        } else {
            self.held.insert(key, (Queue::Small, size));
            self.small.push_front(key);
            self.small_bytes += size;
        }
        let mut dropped = Vec::new();
        while self.bytes() > self.budget && !self.held.is_empty() {
            if self.small_bytes > self.budget / 10 || self.main_bytes == 0 {
                self.evict_small(freq, &mut dropped);
            } else {
                self.evict_main(freq, spend, &mut dropped);
            }
        }
        dropped
    }

    /// Forgets a key (purged): no longer counted.
    pub fn remove(&mut self, key: &K) {
        if let Some((q, size)) = self.held.remove(key) {
            match q {
                Queue::Small => self.small_bytes -= size,
                Queue::Main => self.main_bytes -= size,
            }
        }
    }

    fn evict_small(&mut self, freq: &dyn Fn(&K) -> u8, dropped: &mut Vec<K>) {
        let Some(key) = self.small.pop_back() else {
            return;
        };
        let Some(&(Queue::Small, size)) = self.held.get(&key) else {
            return; // stale entry
        };
        self.small_bytes -= size;
        if freq(&key) > 0 {
            self.held.insert(key, (Queue::Main, size));
            self.main.push_front(key);
            self.main_bytes += size;
        } else {
            self.held.remove(&key);
            dropped.push(key);
            self.ghost.push_front(key);
            self.ghosts.insert(key);
            while self.ghost.len() > self.ghost_cap {
                if let Some(old) = self.ghost.pop_back() {
                    self.ghosts.remove(&old);
                }
            }
        }
    }

    fn evict_main(&mut self, freq: &dyn Fn(&K) -> u8, spend: &dyn Fn(&K), dropped: &mut Vec<K>) {
        // Each pass spends one request of every object it puts back, so this
        // ends within MAX_FREQ + 1 passes over the queue.
        while let Some(key) = self.main.pop_back() {
            let Some(&(Queue::Main, size)) = self.held.get(&key) else {
                continue; // stale entry
            };
            if freq(&key) > 0 {
                spend(&key);
                self.main.push_front(key);
                continue;
            }
            self.held.remove(&key);
            self.main_bytes -= size;
            dropped.push(key);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct Counts(RefCell<HashMap<u32, u8>>);

    impl Counts {
        fn hit(&self, k: u32) {
            let mut m = self.0.borrow_mut();
            let f = m.entry(k).or_default();
            *f = (*f + 1).min(MAX_FREQ);
        }
        fn freq(&self, k: &u32) -> u8 {
            self.0.borrow().get(k).copied().unwrap_or(0)
        }
        fn spend(&self, k: &u32) {
            if let Some(f) = self.0.borrow_mut().get_mut(k) {
                *f = f.saturating_sub(1);
            }
        }
    }

    #[test]
    fn a_scan_of_one_hit_wonders_keeps_the_popular_objects() {
        let counts = Counts(RefCell::new(HashMap::new()));
        let mut cache = S3Fifo::new(100);
        let mut held: HashSet<u32> = HashSet::new();
        let put = |cache: &mut S3Fifo<u32>, k: u32, held: &mut HashSet<u32>| {
            held.insert(k);
            for d in cache.insert(k, 1, &|k| counts.freq(k), &|k| counts.spend(k)) {
                held.remove(&d);
            }
        };
        // 50 popular objects, each asked for a few times.
        for round in 0..4 {
            for k in 0..50 {
                if held.contains(&k) {
                    counts.hit(k);
                } else {
                    put(&mut cache, k, &mut held);
                }
                let _ = round;
            }
        }
        // A scan: 1,000 objects asked for once each, while the popular ones
        // keep being asked for now and then.
        for k in 1000..2000 {
            put(&mut cache, k, &mut held);
            if k % 10 == 0 {
                for p in 0..50 {
                    if held.contains(&p) {
                        counts.hit(p);
                    } else {
                        put(&mut cache, p, &mut held);
                    }
                }
            }
        }
        // Then a scan twice the budget with no popular request in between:
        // plain FIFO or LRU would hold none of the popular objects after it.
        for k in 5000..5200 {
            put(&mut cache, k, &mut held);
        }
        let kept = (0..50).filter(|k| cache.contains(k)).count();
        assert!(
            kept >= 45,
            "only {kept} of 50 popular objects survived the scan"
        );
        assert!(cache.bytes() <= 100);
    }

    #[test]
    fn sizes_count_and_removal_frees() {
        let mut cache: S3Fifo<u32> = S3Fifo::new(10);
        let none = |_: &u32| 0;
        let noop = |_: &u32| {};
        assert!(cache.insert(1, 6, &none, &noop).is_empty());
        assert_eq!(cache.insert(2, 6, &none, &noop), [1]);
        assert_eq!(cache.bytes(), 6);
        cache.remove(&2);
        assert_eq!(cache.bytes(), 0);
        // A ghost that comes back goes to the main queue.
        assert!(cache.insert(1, 4, &none, &noop).is_empty());
        assert_eq!(cache.bytes(), 4);
        // Too large for the budget on its own: dropped at once.
        assert!(cache.insert(3, 50, &none, &noop).contains(&3));
        assert!(cache.bytes() <= 10);
    }
}
