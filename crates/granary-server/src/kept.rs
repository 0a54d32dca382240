//! Bytes kept in memory by blob hash, within a byte budget, the least
//! recently used dropped first: the zstd frames of batch answers
//! ([`frames`](crate::frames)) and small CAS blobs as stored (the
//! [`disk`](crate::disk)). Both are named by content, so what is kept
//! never goes stale.

use bytes::Bytes;
use granary_id::Id;
use quick_cache::sync::Cache;

/// At most a budget of bytes; nothing at all with a budget of 0.
#[derive(Debug)]
pub struct Kept {
    cache: Option<Cache<Id, Bytes, ByLength>>,
}

/// Bytes weigh their length.
#[derive(Debug, Clone)]
struct ByLength;

impl quick_cache::Weighter<Id, Bytes> for ByLength {
    fn weight(&self, _id: &Id, bytes: &Bytes) -> u64 {
        bytes.len() as u64
    }
}

impl Kept {
    /// Keeps at most `budget` bytes, in pieces of about `typical` bytes
    /// (which sizes the cache's index).
    pub fn new(budget: u64, typical: u64) -> Kept {
        let cache = (budget > 0).then(|| {
            let items = (budget / typical.max(1)).clamp(64, 1 << 20) as usize;
            // Few shards: a shard holds at most its share of the budget,
            // and a piece must fit in one.
            let options = quick_cache::OptionsBuilder::new()
                .shards(4)
                .estimated_items_capacity(items)
                .weight_capacity(budget)
                .build()
                .expect("every option is set");
            Cache::with_options(options, ByLength, Default::default(), Default::default())
        });
        Kept { cache }
    }

    pub fn get(&self, id: &Id) -> Option<Bytes> {
        self.cache.as_ref()?.get(id)
    }

    pub fn insert(&self, id: Id, bytes: Bytes) {
        if let Some(cache) = &self.cache {
            cache.insert(id, bytes);
        }
    }

    /// The bytes kept for `id`, or those `make` gives, kept now. Callers
    /// that ask at once wait for one `make`.
    pub fn get_or_insert_with<E>(
        &self,
        id: &Id,
        make: impl FnOnce() -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        match &self.cache {
            None => make(),
            Some(cache) => cache.get_or_insert_with(id, make),
        }
    }

    /// Bytes kept.
    pub fn weight(&self) -> u64 {
        self.cache.as_ref().map_or(0, Cache::weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let kept = Kept::new(1 << 20, 32 << 10);
        for i in 0..64u8 {
            kept.insert(Id([i; 32]), Bytes::from(vec![i; 64 << 10]));
        }
        assert!(kept.weight() <= 1 << 20, "{}", kept.weight());
        assert!(kept.weight() >= 512 << 10, "{}", kept.weight());
        let nothing = Kept::new(0, 1);
        nothing.insert(Id([1; 32]), Bytes::from_static(b"x"));
        assert_eq!((nothing.weight(), nothing.get(&Id([1; 32]))), (0, None));
    }
}
