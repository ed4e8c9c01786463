//! Fair shares (pure): how many leases each live replica aims at.

/// `ceil(total / live)`: no replica takes more than this (the fair share).
pub fn ceil_share(total: usize, live: usize) -> usize {
    total.div_ceil(live.max(1))
}

/// What `me` aims at among `live` (sorted node ids): `total / n`, plus one for the first
/// `total % n` nodes in node-id order. Every replica computes the same split from the same
/// list, so the targets add up to `total` exactly and the spread is never more than one
/// (30 mailboxes, 4 replicas: 8, 8, 7, 7). `me` missing from `live` counts as the last.
pub fn target(total: usize, live: &[String], me: &str) -> usize {
    let n = live.len() + usize::from(!live.iter().any(|l| l == me));
    let rank = live.iter().position(|l| l == me).unwrap_or(n - 1);
    total / n + usize::from(rank < total % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("r{i}")).collect()
    }

    #[test]
    fn targets_add_up_and_differ_by_at_most_one() {
        for total in [0, 1, 7, 29, 30, 31, 10_000] {
            for n in 1..=5 {
                let live = nodes(n);
                let t: Vec<usize> = live.iter().map(|me| target(total, &live, me)).collect();
                assert_eq!(t.iter().sum::<usize>(), total, "{total} over {n}");
                let (min, max) = (t.iter().min().unwrap(), t.iter().max().unwrap());
                assert!(max - min <= 1, "{t:?}");
                assert!(*max <= ceil_share(total, n), "{t:?}");
            }
        }
        assert_eq!(
            nodes(4)
                .iter()
                .map(|me| target(30, &nodes(4), me))
                .collect::<Vec<_>>(),
            [8, 8, 7, 7]
        );
    }

    #[test]
    fn a_replica_not_yet_listed_counts_itself() {
        assert_eq!(target(30, &nodes(2), "r9"), 10);
        assert_eq!(target(30, &[], "r1"), 30);
        assert_eq!(ceil_share(30, 0), 30);
    }
}
