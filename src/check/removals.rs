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
    /// Each owned name's position in `owned` (one hash per name set, where a binary search
    /// compared ~6 names); empty when `owned` is too long for the key.
    positions: HashMap<Bytes, u8>,
    /// `owned` minus the names set, by the bitmask of the set names' positions in `owned`
    /// (exact: the list depends on nothing else). Only when `owned` has at most 128 names.
    lists: RwLock<HashMap<u128, Bytes>>,
}

impl RemovalLists {
    /// `owned` must be sorted and deduplicated.
    pub(super) fn new(owned: Vec<Bytes>) -> Self {
        debug_assert!(owned.windows(2).all(|w| w[0] < w[1]));
        let positions = if owned.len() <= 128 {
            owned.iter().enumerate().filter_map(|(i, h)| Some((h.clone(), u8::try_from(i).ok()?))).collect()
        } else {
            HashMap::new()
        };
        Self { owned, positions, lists: RwLock::new(HashMap::new()) }
    }

    /// Whether lists are keyed by a bitmask of the names set (`owned` has at most 128 names).
    pub(super) fn keyed(&self) -> bool {
        self.owned.len() <= 128
    }

    /// `name`'s bit in the key: 0 for a name that is not owned (it removes nothing).
    pub(super) fn bit(&self, name: &[u8]) -> u128 {
        self.positions.get(name).map_or(0, |&i| 1 << i)
    }

    /// `owned` minus the names in `set`, in `owned`'s order, in wire form.
    pub(super) fn without<'a, I>(&self, set: I) -> Bytes
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        if !self.keyed() {
            // Too many owned names for the key: the list is built for this check alone.
            let kept: Vec<&Bytes> = self.owned.iter().filter(|h| !set.clone().any(|k| k == h.as_ref())).collect();
            return RemoveHeaders::encode_shared(&kept);
        }
        self.keyed_list(set.fold(0, |m, k| m | self.bit(k)))
    }

    /// The list for `mask`, the OR of the [`RemovalLists::bit`]s of the names set (only when
    /// [`RemovalLists::keyed`]): `owned` minus those names, in wire form.
    pub(super) fn keyed_list(&self, mask: u128) -> Bytes {
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
