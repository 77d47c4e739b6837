//! An allow's removal list (every spelling of every owned header, minus the names it sets),
//! computed once per distinct set of names set rather than per check, and shared in its wire
//! form (see [`RemoveHeaders::encode_shared`]): a check costs a lookup and one reference count.
use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;

use crate::decision::RemoveHeaders;

/// Most distinct lists kept (one per combination of identity and claim headers an allow sets;
/// ~1.3 KiB each in a config with dozens of owned spellings). Past it a list is built per
/// check, the same list, just not kept.
const MAX_LISTS: usize = 256;

pub(super) struct RemovalLists {
    /// Every spelling of every owned header, sorted and deduplicated.
    owned: Vec<Bytes>,
    /// `owned` minus the names set, by the bitmask of the set names' positions in `owned`
    /// (exact: the list depends on nothing else). Only when `owned` has at most 128 names.
    lists: RwLock<HashMap<u128, Bytes>>,
}

impl RemovalLists {
    /// `owned` must be sorted and deduplicated.
    pub(super) fn new(owned: Vec<Bytes>) -> Self {
        debug_assert!(owned.windows(2).all(|w| w[0] < w[1]));
        Self { owned, lists: RwLock::new(HashMap::new()) }
    }

    /// `owned` minus the names in `set`, in `owned`'s order, in wire form.
    pub(super) fn without<'a, I>(&self, set: I) -> Bytes
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        let Some(mask) = self.mask(set.clone()) else {
            // Too many owned names for the key: the list is built for this check alone.
            let kept: Vec<&Bytes> = self.owned.iter().filter(|h| !set.clone().any(|k| k == h.as_ref())).collect();
            return RemoveHeaders::encode_shared(&kept);
        };
        // A poisoned lock (a panic while inserting) only costs the cache.
        if let Some(wire) = self.lists.read().ok().and_then(|l| l.get(&mask).cloned()) {
            return wire;
        }
        let kept: Vec<&Bytes> =
            self.owned.iter().enumerate().filter(|(i, _)| mask & (1 << i) == 0).map(|(_, h)| h).collect();
        let wire = RemoveHeaders::encode_shared(&kept);
        if let Ok(mut lists) = self.lists.write()
            && lists.len() < MAX_LISTS
        {
            lists.entry(mask).or_insert_with(|| wire.clone());
        }
        wire
    }

    /// The positions in `owned` of the names set; `None` when `owned` is too long for the key.
    /// A name set that is not owned removes nothing, so it is not part of the key.
    fn mask<'a>(&self, set: impl Iterator<Item = &'a [u8]>) -> Option<u128> {
        if self.owned.len() > 128 {
            return None;
        }
        let mut mask = 0u128;
        for k in set {
            if let Ok(i) = self.owned.binary_search_by(|h| h.as_ref().cmp(k)) {
                mask |= 1 << i;
            }
        }
        Some(mask)
    }

    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.lists.read().map(|l| l.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::RemoveHeaders;

    fn names(n: usize) -> Vec<Bytes> {
        let mut v: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("x-h{i:03}"))).collect();
        v.sort();
        v
    }

    /// `owned` minus `set`, the plain way.
    fn direct(owned: &[Bytes], set: &[&[u8]]) -> Vec<Bytes> {
        owned.iter().filter(|h| !set.contains(&h.as_ref())).cloned().collect()
    }

    #[test]
    fn every_subset_gets_its_exact_list_and_the_cache_stays_bounded() {
        let owned = names(12);
        let lists = RemovalLists::new(owned.clone());
        // 2^10 distinct sets of names set (hostile: each token could carry another mix), each
        // asked twice, plus names that are not owned at all.
        for round in 0..2 {
            for bits in 0u32..1024 {
                let mut set: Vec<&[u8]> = (0..10).filter(|b| bits & (1 << b) != 0).map(|b| owned[b].as_ref()).collect();
                set.push(b"not-owned");
                let got = RemoveHeaders::shared(lists.without(set.iter().copied()));
                assert_eq!(got, direct(&owned, &set), "{bits:#b} round {round}");
            }
        }
        assert_eq!(lists.kept(), MAX_LISTS);
    }

    #[test]
    fn more_owned_names_than_the_key_holds_are_still_exact() {
        let owned = names(200);
        let lists = RemovalLists::new(owned.clone());
        let set: Vec<&[u8]> = vec![owned[0].as_ref(), owned[150].as_ref(), owned[199].as_ref()];
        assert_eq!(RemoveHeaders::shared(lists.without(set.iter().copied())), direct(&owned, &set));
        assert_eq!(RemoveHeaders::shared(lists.without(std::iter::empty())), owned);
        assert_eq!(lists.kept(), 0);
    }

    #[test]
    fn an_empty_list_and_long_names_round_trip() {
        let long = Bytes::from("y".repeat(300));
        let owned = vec![Bytes::from("a"), long.clone()];
        let lists = RemovalLists::new(owned.clone());
        assert!(RemoveHeaders::shared(lists.without(owned.iter().map(|b| b.as_ref()))).is_empty());
        // A name of 300 bytes takes a two-byte varint length.
        assert_eq!(RemoveHeaders::shared(lists.without([b"a".as_slice()].into_iter())), vec![long]);
    }
}
