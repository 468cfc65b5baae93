//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4), extended with weights.
//!
//! Each backend walks its own permutation of the table, derived only from its name, and the
//! backends take turns claiming the next free entry they prefer. Because a backend's
//! preferences do not depend on who else is in the set, adding or removing one backend moves
//! little more than the entries it gains or loses, so flows that miss the connection table
//! (after an agent restart, or on another node) still mostly land on their old backend.

use thiserror::Error;

/// Default table size M: a prime, as in Cilium.
pub const DEFAULT_RING_SIZE: u32 = 16381;

/// Marks a table entry no backend has claimed yet; never a valid index, because a table is
/// only built when there are fewer backends than entries.
const EMPTY: u32 = u32::MAX;

/// Seeds for the two name hashes; changing either reshuffles every table, breaking flows on
/// upgrade, so they are pinned by a test.
const OFFSET_SEED: u64 = 0;
const SKIP_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Whether `n` is prime. The table size must be: only then is every skip in `1..M` coprime
/// with M, so each backend's permutation reaches every entry.
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// A backend as Maglev sees it: a stable name (hashed for its permutation) and a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Must identify the backend across restarts (e.g. `ip:port`), since it fixes the
    /// backend's preferred entries.
    pub name: &'a str,
    /// Relative share of the table; 0 keeps the backend out of the table.
    pub weight: u32,
}

#[derive(Error, Debug, PartialEq, Eq)]
pub enum MaglevError {
    #[error(
        "Maglev ring size {0} is not prime; a prime is needed for every backend to be able to reach every entry"
    )]
    NotPrime(u32),
    #[error(
        "Maglev ring size {ring_size} is too small for {backends} backends; it must be larger than the backend count"
    )]
    RingTooSmall { ring_size: u32, backends: usize },
    #[error("none of the {backends} backends has a nonzero weight, so no entry can be filled")]
    NoWeight { backends: usize },
    #[error(
        "backend name {0:?} appears more than once; names must be unique to give each backend its own permutation"
    )]
    DuplicateName(String),
}

/// 64-bit FNV-1a from a chosen basis. Written out here rather than taken from std because
/// std's hashers may change between releases, and the table must survive agent upgrades.
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes
        .iter()
        .fold(basis, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// MurmurHash3's 64-bit finalizer: in FNV-1a a name's last byte passes through a single
/// multiply, so names differing only at the end (`10.0.0.1:80`, `10.0.0.2:80`) would get
/// related hashes, and with them related offsets and skips.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A hash of `name` that every build of lb computes alike (see [`fnv1a`]):
/// Maglev's permutations, and BIRD's names for long session names.
pub(crate) fn name_hash(name: &str, seed: u64) -> u64 {
    fmix64(fnv1a(name.as_bytes(), FNV_OFFSET_BASIS ^ seed))
}

/// One backend's progress through its permutation while the table fills.
struct Walker {
    /// Index into the caller's slice: what the table stores.
    index: u32,
    weight: u64,
    /// `permutation[next]` for the next preference not yet tried.
    position: u32,
    skip: u32,
    credit: u64,
}

impl Walker {
    fn new(index: u32, backend: &MaglevBackend<'_>, ring_size: u32) -> Self {
        let m = u64::from(ring_size);
        let offset = name_hash(backend.name, OFFSET_SEED) % m;
        let skip = name_hash(backend.name, SKIP_SEED) % (m - 1) + 1;
        Walker {
            index,
            weight: u64::from(backend.weight),
            // Both are below `ring_size`, so they fit.
            position: offset as u32,
            skip: skip as u32,
            credit: 0,
        }
    }

    /// Steps to `permutation[j + 1] = (offset + (j + 1) * skip) % M` incrementally, written
    /// so `position + skip` cannot overflow for M near `u32::MAX`.
    fn advance(&mut self, ring_size: u32) {
        let room = ring_size - self.skip;
        self.position = if self.position >= room {
            self.position - room
        } else {
            self.position + self.skip
        };
    }
}

/// Returns the lookup table: `ring_size` entries, each an index into `backends`.
///
/// Backends take turns in name order, not input order, so the table for a set of backends
/// does not depend on how the caller happened to list them. Weights are honoured with
/// credit: each turn a backend earns its weight, and spends the largest weight to claim an
/// entry, so the heaviest backend claims every turn and the others proportionally less often.
pub fn build_table(
    backends: &[MaglevBackend<'_>],
    ring_size: u32,
) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(ring_size) {
        return Err(MaglevError::NotPrime(ring_size));
    }
    if u64::from(ring_size) <= backends.len() as u64 {
        return Err(MaglevError::RingTooSmall {
            ring_size,
            backends: backends.len(),
        });
    }

    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_unstable_by_key(|&i| backends[i].name);
    if let Some(pair) = order
        .windows(2)
        .find(|pair| backends[pair[0]].name == backends[pair[1]].name)
    {
        return Err(MaglevError::DuplicateName(
            backends[pair[0]].name.to_owned(),
        ));
    }

    let max_weight = backends
        .iter()
        .map(|b| u64::from(b.weight))
        .max()
        .unwrap_or(0);
    if max_weight == 0 {
        return Err(MaglevError::NoWeight {
            backends: backends.len(),
        });
    }

    let mut walkers: Vec<Walker> = order
        .into_iter()
        .filter(|&i| backends[i].weight > 0)
        // `backends.len() < ring_size`, so every index fits in u32.
        .map(|i| Walker::new(i as u32, &backends[i], ring_size))
        .collect();

    let mut table = vec![EMPTY; ring_size as usize];
    let mut filled = 0u32;
    loop {
        for walker in &mut walkers {
            walker.credit += walker.weight;
            // Credit was below `max_weight` and grew by at most `max_weight`, so one claim
            // per turn brings it back below.
            if walker.credit < max_weight {
                continue;
            }
            walker.credit -= max_weight;
            // Terminates: the permutation covers every entry and some entry is still empty.
            while table[walker.position as usize] != EMPTY {
                walker.advance(ring_size);
            }
            table[walker.position as usize] = walker.index;
            walker.advance(ring_size);
            filled += 1;
            if filled == ring_size {
                return Ok(table);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
            .collect()
    }

    fn equal(names: &[String]) -> Vec<MaglevBackend<'_>> {
        names
            .iter()
            .map(|name| MaglevBackend { name, weight: 1 })
            .collect()
    }

    /// Entries per backend index.
    fn counts(table: &[u32], backends: usize) -> Vec<usize> {
        let mut counts = vec![0; backends];
        for &entry in table {
            counts[entry as usize] += 1;
        }
        counts
    }

    /// The table as backend names, so tables over different slices compare.
    fn by_name<'a>(table: &[u32], backends: &[MaglevBackend<'a>]) -> Vec<&'a str> {
        table.iter().map(|&i| backends[i as usize].name).collect()
    }

    /// Asserts every backend's share of the table is within 1% of `weight / sum(weights)`.
    fn assert_weighted_shares(backends: &[MaglevBackend<'_>], ring_size: u32) {
        let table = build_table(backends, ring_size).unwrap();
        assert_eq!(table.len(), ring_size as usize);
        assert!(table.iter().all(|&i| (i as usize) < backends.len()));
        let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        let mut worst = 0f64;
        for (backend, count) in backends.iter().zip(counts(&table, backends.len())) {
            let share = count as f64 / f64::from(ring_size);
            let want = backend.weight as f64 / total as f64;
            worst = worst.max((share - want).abs());
            assert!(
                (share - want).abs() <= 0.01,
                "{} (weight {}): share {share:.5}, want {want:.5}",
                backend.name,
                backend.weight
            );
        }
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let weights = if weights.len() <= 8 {
            format!("{weights:?}")
        } else {
            format!("{} backends", weights.len())
        };
        println!("M={ring_size} weights {weights}: worst |share - want| = {worst:.6}");
    }

    /// Fraction of entries whose backend changed, and the fraction of entries that changed
    /// although both their old and new backend are in both sets.
    fn disruption(before: &[&str], after: &[&str], common: &[&str]) -> (f64, f64) {
        let m = before.len() as f64;
        let moved = before.iter().zip(after).filter(|(a, b)| a != b).count();
        let reshuffled = before
            .iter()
            .zip(after)
            .filter(|(a, b)| a != b && common.contains(a) && common.contains(b))
            .count();
        (moved as f64 / m, reshuffled as f64 / m)
    }

    #[test]
    fn is_prime_basics() {
        let primes: Vec<u32> = (0..50).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            primes,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
        );
        assert!(is_prime(DEFAULT_RING_SIZE));
        assert!(is_prime(65537));
        assert!(!is_prime(65535));
        assert!(!is_prime(25)); // 5 * 5: the loop must test d * d == n
        assert!(!is_prime(16383)); // 3 * 43 * 127
        assert!(is_prime(4_294_967_291)); // largest u32 prime
        assert!(!is_prime(u32::MAX));
    }

    #[test]
    fn rejects_bad_input() {
        let names = names(3);
        let backends = equal(&names);
        assert_eq!(
            build_table(&backends, 16383),
            Err(MaglevError::NotPrime(16383))
        );
        assert_eq!(build_table(&backends, 0), Err(MaglevError::NotPrime(0)));
        assert_eq!(build_table(&backends, 1), Err(MaglevError::NotPrime(1)));
        assert_eq!(
            build_table(&backends, 3),
            Err(MaglevError::RingTooSmall {
                ring_size: 3,
                backends: 3
            })
        );
        assert_eq!(
            build_table(&backends, 2),
            Err(MaglevError::RingTooSmall {
                ring_size: 2,
                backends: 3
            })
        );
        assert_eq!(build_table(&backends, 5).map(|t| t.len()), Ok(5));

        let idle: Vec<MaglevBackend<'_>> = backends
            .iter()
            .map(|b| MaglevBackend { weight: 0, ..*b })
            .collect();
        assert_eq!(
            build_table(&idle, DEFAULT_RING_SIZE),
            Err(MaglevError::NoWeight { backends: 3 })
        );
        assert_eq!(
            build_table(&[], DEFAULT_RING_SIZE),
            Err(MaglevError::NoWeight { backends: 0 })
        );

        let twice = [backends[0], backends[1], backends[0]];
        assert_eq!(
            build_table(&twice, DEFAULT_RING_SIZE),
            Err(MaglevError::DuplicateName(names[0].clone()))
        );

        let message = MaglevError::NotPrime(16383).to_string();
        assert!(message.contains("16383"), "{message}");
        let message = MaglevError::RingTooSmall {
            ring_size: 3,
            backends: 3,
        }
        .to_string();
        assert!(
            message.contains("size 3") && message.contains("3 backends"),
            "{message}"
        );
    }

    #[test]
    fn single_backend_takes_every_entry() {
        let names = names(1);
        let table = build_table(&equal(&names), 2).unwrap();
        assert_eq!(table, [0, 0]);
        let table = build_table(&equal(&names), DEFAULT_RING_SIZE).unwrap();
        assert!(table.iter().all(|&i| i == 0));
    }

    #[test]
    fn equal_weights_share_evenly() {
        for (n, ring_size) in [
            (3, DEFAULT_RING_SIZE),
            (100, 16381),
            (100, 65537),
            (600, 65537),
        ] {
            let names = names(n);
            assert!(ring_size as usize > 100 * n);
            let backends = equal(&names);
            assert_weighted_shares(&backends, ring_size);
            // Equal weights claim one entry per turn each, so counts differ by at most one.
            let counts = counts(&build_table(&backends, ring_size).unwrap(), n);
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "N={n} M={ring_size}: counts {min}..={max}");
        }
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let names = names(4);
        let with = |weights: &[u32]| -> Vec<MaglevBackend<'_>> {
            names
                .iter()
                .zip(weights)
                .map(|(name, &weight)| MaglevBackend { name, weight })
                .collect()
        };
        assert_weighted_shares(&with(&[1, 2, 3]), DEFAULT_RING_SIZE);
        assert_weighted_shares(&with(&[1, 10]), DEFAULT_RING_SIZE);
        assert_weighted_shares(&with(&[10, 1]), DEFAULT_RING_SIZE);
        assert_weighted_shares(&with(&[100, 250, 7, 1000]), 65537);
        // Weights near u32::MAX must not overflow the credit.
        assert_weighted_shares(&with(&[u32::MAX, u32::MAX / 2]), DEFAULT_RING_SIZE);
    }

    #[test]
    fn zero_weight_backend_gets_no_entries() {
        let names = names(4);
        let backends: Vec<MaglevBackend<'_>> = names
            .iter()
            .zip([3, 0, 1, 0])
            .map(|(name, weight)| MaglevBackend { name, weight })
            .collect();
        let table = build_table(&backends, DEFAULT_RING_SIZE).unwrap();
        let counts = counts(&table, backends.len());
        println!("weights 3,0,1,0: counts {counts:?}");
        assert_eq!(counts[1], 0);
        assert_eq!(counts[3], 0);
        assert_eq!(counts[0] + counts[2], DEFAULT_RING_SIZE as usize);
        // The drained backends keep their positions, and the others their entries: the
        // table is the one built without them, by name.
        let without = [backends[0], backends[2]];
        assert_eq!(
            by_name(&table, &backends),
            by_name(&build_table(&without, DEFAULT_RING_SIZE).unwrap(), &without)
        );
    }

    #[test]
    fn removing_or_adding_a_backend_moves_about_its_share() {
        for (n, ring_size) in [(10, DEFAULT_RING_SIZE), (10, 65537), (100, 65537)] {
            let names = names(n + 1);
            let all = equal(&names);
            let base = &all[..n];
            let before = build_table(base, ring_size).unwrap();
            let before = by_name(&before, base);

            // Remove one from the middle.
            let removed: Vec<MaglevBackend<'_>> = base
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != n / 2)
                .map(|(_, b)| *b)
                .collect();
            let after = build_table(&removed, ring_size).unwrap();
            let after = by_name(&after, &removed);
            let survivors: Vec<&str> = removed.iter().map(|b| b.name).collect();
            let (moved, reshuffled) = disruption(&before, &after, &survivors);
            let ideal = 1.0 / n as f64;
            println!(
                "remove 1 of N={n}, M={ring_size}: moved {moved:.4} (ideal {ideal:.4}), \
                 survivor entries moved {reshuffled:.4}, survivor entries kept {:.4}",
                1.0 - reshuffled / (1.0 - ideal)
            );
            assert!(
                moved >= ideal - 0.01,
                "the removed backend's entries must move"
            );
            assert!(moved <= 1.1 * ideal + 0.01, "moved {moved}, ideal {ideal}");
            assert!(reshuffled <= 0.01, "reshuffled {reshuffled}");

            // Add one.
            let added = &all[..n + 1];
            let after = build_table(added, ring_size).unwrap();
            let after = by_name(&after, added);
            let existing: Vec<&str> = base.iter().map(|b| b.name).collect();
            let (moved, reshuffled) = disruption(&before, &after, &existing);
            let ideal = 1.0 / (n + 1) as f64;
            println!(
                "add 1 to N={n}, M={ring_size}: moved {moved:.4} (ideal {ideal:.4}), \
                 existing entries moved between existing backends {reshuffled:.4}"
            );
            assert!(moved >= ideal - 0.01, "the new backend must get its share");
            assert!(moved <= 1.1 * ideal + 0.01, "moved {moved}, ideal {ideal}");
            assert!(reshuffled <= 0.01, "reshuffled {reshuffled}");
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let names = names(50);
        let backends: Vec<MaglevBackend<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, name)| MaglevBackend {
                name,
                weight: 1 + (i % 4) as u32,
            })
            .collect();
        let table = build_table(&backends, DEFAULT_RING_SIZE).unwrap();

        let mut reversed = backends.clone();
        reversed.reverse();
        let mut rotated = backends.clone();
        rotated.rotate_left(17);
        for other in [reversed, rotated] {
            let other_table = build_table(&other, DEFAULT_RING_SIZE).unwrap();
            assert_ne!(
                other_table, table,
                "indexes must refer to the caller's order"
            );
            assert_eq!(by_name(&other_table, &other), by_name(&table, &backends));
        }
    }

    /// The table must be the same in every process and every release: a change here
    /// reshuffles every service's flows on upgrade, so it has to be deliberate.
    #[test]
    fn hashes_and_table_are_pinned() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b"", FNV_OFFSET_BASIS), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a", FNV_OFFSET_BASIS), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar", FNV_OFFSET_BASIS), 0x8594_4171_f739_67e8);

        assert_eq!(
            name_hash("10.0.0.1:8080", OFFSET_SEED),
            0xe8c7_2115_6ed5_2b14
        );
        assert_eq!(name_hash("10.0.0.1:8080", SKIP_SEED), 0x212d_e274_9e59_f3d6);

        let names = names(3);
        let table = build_table(&equal(&names), 13).unwrap();
        assert_eq!(table, [1, 2, 1, 1, 0, 0, 1, 0, 0, 0, 2, 2, 2]);
    }
}
