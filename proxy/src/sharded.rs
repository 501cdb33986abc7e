//! A value split into independently locked shards by the hash of a string key, so that
//! requests touching different keys rarely meet on one lock (the in-memory tag map and
//! the pending tag-pull log use it).

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

/// Shards per [`Sharded`].
pub const SHARDS: usize = 16;

/// `SHARDS` values of `T` (typically a lock around a map), one per key hash.
pub struct Sharded<T> {
    shards: [T; SHARDS],
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded {
            shards: std::array::from_fn(|_| T::default()),
        }
    }
}

impl<T> Sharded<T> {
    /// The shard `key` belongs to.
    pub fn shard(&self, key: &str) -> &T {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.shards[(h as usize) % SHARDS]
    }

    /// Every shard.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::collections::HashMap;

    #[test]
    fn a_key_always_lands_in_the_same_shard_and_keys_spread() {
        let s: Sharded<Mutex<HashMap<String, u32>>> = Sharded::default();
        for i in 0..1000u32 {
            let k = format!("repo/{i}:latest");
            s.shard(&k).lock().insert(k.clone(), i);
            assert_eq!(s.shard(&k).lock().get(&k), Some(&i));
        }
        let sizes: Vec<usize> = s.iter().map(|m| m.lock().len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert!(
            sizes.iter().all(|&n| n > 20),
            "keys spread over every shard: {sizes:?}"
        );
    }
}
