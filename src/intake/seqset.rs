//! A set of sequence numbers kept as sorted, disjoint, inclusive ranges.
//!
//! Sources send increasing sequences with few gaps, so the set of everything a
//! source ever had stored stays a handful of ranges: an exact, compact
//! watermark that can be persisted with every batch.

use serde::{Deserialize, Serialize};

/// Sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeqSet {
    ranges: Vec<(u64, u64)>,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Index of the first range whose end is >= `value`.
    fn locate(&self, value: u64) -> usize {
        self.ranges.partition_point(|&(_, end)| end < value)
    }

    /// Whether `value` is in the set.
    pub fn contains(&self, value: u64) -> bool {
        let i = self.locate(value);
        i < self.ranges.len() && self.ranges[i].0 <= value
    }

    /// Adds `value`; returns false if it was already there.
    pub fn insert(&mut self, value: u64) -> bool {
        let i = self.locate(value);
        if i < self.ranges.len() && self.ranges[i].0 <= value {
            return false;
        }
        let joins_left = i > 0 && self.ranges[i - 1].1.checked_add(1) == Some(value);
        let joins_right = i < self.ranges.len() && value.checked_add(1) == Some(self.ranges[i].0);
        match (joins_left, joins_right) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = value,
            (false, true) => self.ranges[i].0 = value,
            (false, false) => self.ranges.insert(i, (value, value)),
        }
        true
    }

    /// Number of ranges (the memory the set needs).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The largest member.
    pub fn max(&self) -> Option<u64> {
        self.ranges.last().map(|&(_, end)| end)
    }

    /// The ranges, for reports.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn merges_neighbours() {
        let mut s = SeqSet::new();
        for v in [5, 7, 6, 1, 0, u64::MAX, 3] {
            assert!(s.insert(v));
        }
        assert!(!s.insert(6));
        assert_eq!(s.ranges(), &[(0, 1), (3, 3), (5, 7), (u64::MAX, u64::MAX)]);
        assert!(s.insert(2));
        assert_eq!(s.ranges(), &[(0, 3), (5, 7), (u64::MAX, u64::MAX)]);
        assert!(s.contains(7) && !s.contains(4) && !s.contains(8));
        assert_eq!(s.max(), Some(u64::MAX));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, format!("[[0,3],[5,7],[{0},{0}]]", u64::MAX));
        assert_eq!(serde_json::from_str::<SeqSet>(&json).unwrap(), s);
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(values in proptest::collection::vec(0u64..200, 0..300)) {
            let mut s = SeqSet::new();
            let mut model = BTreeSet::new();
            for v in values {
                prop_assert_eq!(s.insert(v), model.insert(v));
            }
            for v in 0..210 {
                prop_assert_eq!(s.contains(v), model.contains(&v));
            }
            for w in s.ranges().windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "ranges must be disjoint and non-adjacent");
            }
        }
    }
}
