//! The index's map from keys to what is known of their blobs, laid out
//! for millions of entries.
//!
//! A `HashMap<Key, V>` keeps every entry in its slots, and its slots
//! number a power of two at most 7/8 full: between 1.14 and 2.29 slots an
//! entry, each a whole entry wide (113 to 192 bytes of RSS an entry were
//! measured with an 80-byte slot, `bench/fleet.py`). Here the entries sit densely in one `Vec`, whose
//! unused capacity the kernel never maps in, and the hash table holds only
//! their positions: 4 bytes a slot (and hashbrown's 1 control byte). An
//! entry of a 33-byte key and 24 bytes of metadata takes 64 bytes; with
//! the table's slots, 70 to 76 bytes in all.
//!
//! Removing swaps the last entry into the hole, so positions stay dense
//! and a scan over [`Table::chunk`] sees every entry that stays put.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::key::Key;

/// Keys and values, found by key.
#[derive(Debug)]
pub struct Table<V> {
    entries: Vec<(Key, V)>,
    positions: HashTable<u32>,
    /// Keyed at random: clients choose action cache keys freely, and a
    /// fixed hash would let them pile keys into one probe sequence.
    hasher: std::hash::RandomState,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table::from_entries(Vec::new(), |_, _, _| {})
    }
}

impl<V> Table<V> {
    /// The table of `entries`. Where a key comes twice, `merge` is given
    /// the kept value and the other to make one of them.
    pub fn from_entries(
        mut entries: Vec<(Key, V)>,
        mut merge: impl FnMut(&Key, &mut V, V),
    ) -> Self {
        let hasher = std::hash::RandomState::new();
        let mut positions = HashTable::with_capacity(entries.len());
        let mut next = 0;
        while next < entries.len() {
            let key = entries[next].0;
            let hash = hasher.hash_one(key);
            match positions.find(hash, |&at: &u32| entries[at as usize].0 == key) {
                Some(&at) => {
                    // The entry swapped in from the end is not indexed
                    // yet: it is looked at next.
                    let (_, value) = entries.swap_remove(next);
                    merge(&key, &mut entries[at as usize].1, value);
                }
                None => {
                    positions.insert_unique(hash, position(next), |&at: &u32| {
                        hasher.hash_one(entries[at as usize].0)
                    });
                    next += 1;
                }
            }
        }
        Table {
            entries,
            positions,
            hasher,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn find(&self, key: &Key) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        self.positions
            .find(hash, |&at| self.entries[at as usize].0 == *key)
            .map(|&at| at as usize)
    }

    pub fn get(&self, key: &Key) -> Option<&V> {
        self.find(key).map(|at| &self.entries[at].1)
    }

    pub fn get_mut(&mut self, key: &Key) -> Option<&mut V> {
        self.find(key).map(|at| &mut self.entries[at].1)
    }

    /// Adds or replaces `key`'s value; the replaced one.
    pub fn insert(&mut self, key: Key, value: V) -> Option<V> {
        if let Some(at) = self.find(&key) {
            return Some(std::mem::replace(&mut self.entries[at].1, value));
        }
        let hash = self.hasher.hash_one(key);
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.positions
            .insert_unique(hash, position(entries.len()), |&at| {
                hasher.hash_one(entries[at as usize].0)
            });
        self.entries.push((key, value));
        None
    }

    pub fn remove(&mut self, key: &Key) -> Option<V> {
        let hash = self.hasher.hash_one(key);
        let entries = &self.entries;
        let (at, _) = self
            .positions
            .find_entry(hash, |&at| entries[at as usize].0 == *key)
            .ok()?
            .remove();
        let (_, value) = self.entries.swap_remove(at as usize);
        if let Some((moved, _)) = self.entries.get(at as usize) {
            // The last entry took the hole: point its slot there.
            let last = position(self.entries.len());
            let slot = self
                .positions
                .find_mut(self.hasher.hash_one(moved), |&p| p == last)
                .expect("every entry has a slot");
            *slot = at;
        }
        Some(value)
    }

    /// Entries from `start`, at most `count`: a long scan takes the index
    /// in chunks, so that no request waits for all of it.
    pub fn chunk(&self, start: usize, count: usize) -> &[(Key, V)] {
        let start = start.min(self.entries.len());
        let end = start.saturating_add(count).min(self.entries.len());
        &self.entries[start..end]
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Key, V)> {
        self.entries.iter()
    }
}

fn position(at: usize) -> u32 {
    u32::try_from(at).expect("fewer than 2^32 blobs in one index")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use granary_id::Id;

    use super::*;
    use crate::key::Kind;

    fn key(i: u32) -> Key {
        let kind = match i % 3 {
            0 => Kind::Ac,
            _ => Kind::Cas,
        };
        let mut hash = [0u8; 32];
        hash[..4].copy_from_slice(&i.to_le_bytes());
        Key {
            kind,
            hash: Id::from(hash),
        }
    }

    /// Random inserts, replacements and removals agree with a `HashMap`,
    /// and every position stays right after the swaps.
    #[test]
    fn agrees_with_a_hash_map() {
        let mut table = Table::default();
        let mut model = HashMap::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for step in 0..200_000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let k = key((state % 5_000) as u32);
            match state % 7 {
                0..=3 => assert_eq!(table.insert(k, step), model.insert(k, step)),
                4 | 5 => assert_eq!(table.remove(&k), model.remove(&k)),
                _ => assert_eq!(table.get(&k), model.get(&k)),
            }
            assert_eq!(table.len(), model.len());
        }
        for (k, v) in &model {
            assert_eq!(table.get(k), Some(v));
        }
        let scanned: usize = (0..table.len())
            .step_by(1000)
            .map(|start| table.chunk(start, 1000).len())
            .sum();
        assert_eq!(scanned, model.len());
    }

    #[test]
    fn duplicates_are_merged_on_building() {
        let entries = vec![
            (key(1), 1),
            (key(2), 2),
            (key(1), 10),
            (key(3), 3),
            (key(1), 100),
        ];
        let table = Table::from_entries(entries, |_, kept, other| *kept += other);
        assert_eq!(table.len(), 3);
        assert_eq!(table.get(&key(1)), Some(&111));
        assert_eq!(table.get(&key(3)), Some(&3));
    }

    /// What the module's overview promises: 64 bytes an entry of the
    /// server's index.
    #[test]
    fn an_entry_of_the_index_takes_64_bytes() {
        assert_eq!(size_of::<(Key, crate::disk::Meta)>(), 64);
    }
}
