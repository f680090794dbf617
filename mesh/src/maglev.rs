//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016), as Envoy's `MAGLEV` lb policy does it, packaged as a
//! pingora-load-balancing [`BackendSelection`] so it plugs into `LoadBalancer<Maglev>`.
//!
//! Why it exists: pingora-load-balancing only ships Ketama (a hash ring). Maglev spreads keys
//! far more evenly (every backend owns an almost equal share of a fixed-size lookup table),
//! looks up in O(1), and still moves few keys when the backend set changes.
//!
//! How: each backend gets a permutation of the `M` table slots (M prime) derived from two
//! hashes of its address; backends take turns claiming their next free preferred slot until
//! the table is full. Weighted backends take turns proportionally to `weight / max_weight`
//! (Envoy's scheme). A key maps to `table[hash(key) % M]`.
//!
//! Fallback: [`MaglevIter`] yields the key's backend first, then walks the table from that slot
//! onward yielding each not-yet-seen backend, so `select_with` can skip an unhealthy backend
//! and land on a deterministic second choice. It ends after every backend in the table was
//! yielded once.
//!
//! All hashing uses a fixed function (FNV-1a + a murmur3 finaliser), never std's randomly
//! seeded `RandomState`: every process of every build must map a key to the same backend.

use std::collections::BTreeSet;
use std::sync::Arc;

use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

/// Envoy's default table size. Must be prime so every `skip` in `1..M` is coprime with `M`,
/// which makes each backend's probe sequence a full permutation of the slots.
pub const DEFAULT_TABLE_SIZE: u64 = 65_537;

/// Envoy's upper bound for the table size (a prime); larger requests are clamped to it.
pub const MAX_TABLE_SIZE: u64 = 5_000_011;

// Distinct seeds keep the key hash and the two per-backend hashes independent of each other.
const SEED_KEY: u64 = 0;
const SEED_OFFSET: u64 = 1;
const SEED_SKIP: u64 = 2;

/// Marks a slot not yet claimed while the table is being built.
const EMPTY: u32 = u32::MAX;

/// Maglev configuration (`LoadBalancer::from_backends_with_config`). The plain
/// `LoadBalancer::from_backends` / `try_from_iter` constructors use the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevConfig {
    /// Lookup table size. 0 means [`DEFAULT_TABLE_SIZE`]; other values are clamped to
    /// `2..=MAX_TABLE_SIZE` and rounded up to the next prime (build never fails).
    pub table_size: u64,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        Self {
            table_size: DEFAULT_TABLE_SIZE,
        }
    }
}

/// A built Maglev lookup table over one backend set.
pub struct Maglev {
    /// The backends in `BTreeSet` order; table entries index into this.
    backends: Vec<Backend>,
    /// slot → index into `backends`. Empty iff there are no backends.
    table: Vec<u32>,
    /// How many distinct backends own at least one slot (all of them unless there are more
    /// backends than slots). The iterator stops after yielding this many.
    present: usize,
}

impl Maglev {
    /// The lookup table's size (0 when built from an empty set).
    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// The table's slot for `key`; `None` when the table is empty.
    fn slot_for(&self, key: &[u8]) -> Option<usize> {
        let m = self.table.len() as u64;
        (m > 0).then(|| (hash(SEED_KEY, key) % m) as usize)
    }
}

impl BackendSelection for Maglev {
    type Iter = MaglevIter;
    type Config = MaglevConfig;

    fn build_with_config(backends: &BTreeSet<Backend>, config: &Self::Config) -> Self {
        let backends: Vec<Backend> = backends.iter().cloned().collect();
        let m = effective_table_size(config.table_size);
        let table = build_table(&backends, m);
        // Each of the first min(N, M) backends claims a slot in the first round.
        let present = if table.is_empty() {
            0
        } else {
            backends.len().min(table.len())
        };
        Self {
            backends,
            table,
            present,
        }
    }

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::build_with_config(backends, &MaglevConfig::default())
    }

    fn iter(self: &Arc<Self>, key: &[u8]) -> Self::Iter {
        MaglevIter {
            start: self.slot_for(key).unwrap_or(0),
            maglev: Arc::clone(self),
            step: 0,
            yielded: 0,
            first: 0,
            seen: Vec::new(),
        }
    }
}

/// Yields the key's backend, then each further distinct backend in table order; see the
/// module docs.
pub struct MaglevIter {
    maglev: Arc<Maglev>,
    /// The key's slot.
    start: usize,
    /// Slots examined so far (the walk covers at most the whole table once).
    step: usize,
    yielded: usize,
    /// The first backend yielded; recorded so `seen` need only be allocated when a caller
    /// asks for a fallback (the common case asks once).
    first: usize,
    /// Backends already yielded, indexed like `Maglev::backends`; empty until needed.
    seen: Vec<bool>,
}

impl BackendIter for MaglevIter {
    fn next(&mut self) -> Option<&Backend> {
        let maglev = &*self.maglev;
        let len = maglev.table.len();
        if self.yielded >= maglev.present {
            return None;
        }
        while self.step < len {
            let slot = (self.start + self.step) % len;
            self.step += 1;
            let idx = maglev.table.get(slot).map_or(0, |&i| i as usize);
            if self.yielded == 0 {
                self.first = idx;
            } else {
                if self.seen.is_empty() {
                    self.seen = vec![false; maglev.backends.len()];
                    if let Some(s) = self.seen.get_mut(self.first) {
                        *s = true;
                    }
                }
                match self.seen.get_mut(idx) {
                    Some(s) if !*s => *s = true,
                    _ => continue,
                }
            }
            self.yielded += 1;
            return maglev.backends.get(idx);
        }
        None
    }
}

/// Per-backend state while filling the table.
struct Entry {
    /// Next slot in this backend's permutation: starts at `offset`, advances by `skip`.
    pos: u64,
    skip: u64,
    /// u128 so `round * weight` and the running target cannot overflow for any usize weight
    /// (rounds ≤ M ≤ 2^23).
    weight: u128,
    target: u128,
}

/// Fill an `m`-slot table (Envoy's `MaglevTable` construction with integer weights).
fn build_table(backends: &[Backend], m: u64) -> Vec<u32> {
    if backends.is_empty() || m == 0 {
        return Vec::new();
    }
    // Backends beyond the first `m` can never win a slot (round one fills the table first),
    // so leave them out; this also keeps every index below MAX_TABLE_SIZE, i.e. within u32.
    let mut entries: Vec<Entry> = backends
        .iter()
        .take(m as usize)
        .map(|b| {
            // Hash the address text, as Envoy does, so the permutation survives restarts and
            // doesn't depend on the backend's position in the set.
            let addr = b.addr.to_string();
            Entry {
                pos: hash(SEED_OFFSET, addr.as_bytes()) % m,
                skip: hash(SEED_SKIP, addr.as_bytes()) % (m - 1).max(1) + 1,
                // Weight 0 shouldn't reach us (pingora defaults to 1); treat it as the minimum
                // rather than silently dropping the endpoint.
                weight: b.weight.max(1) as u128,
                target: 0,
            }
        })
        .collect();
    let max_weight = entries.iter().map(|e| e.weight).max().unwrap_or(1);

    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0u64;
    let mut round: u128 = 1;
    // Each round the max-weight backend always takes a turn, so every round fills at least
    // one slot and the loop ends after at most `m` rounds.
    while filled < m {
        for (i, e) in entries.iter_mut().enumerate() {
            if filled == m {
                break;
            }
            // A backend with weight w takes a turn in about w/max_weight of the rounds.
            if round * e.weight < e.target {
                continue;
            }
            e.target += max_weight;
            // Probe this backend's permutation for its next free slot. One always exists
            // (filled < m) and the permutation covers every slot, so this terminates.
            while table[e.pos as usize] != EMPTY {
                e.pos = (e.pos + e.skip) % m;
            }
            table[e.pos as usize] = i as u32;
            e.pos = (e.pos + e.skip) % m;
            filled += 1;
        }
        round += 1;
    }
    table
}

/// 0 → default; otherwise clamp to `2..=MAX_TABLE_SIZE` and round up to a prime.
fn effective_table_size(requested: u64) -> u64 {
    if requested == 0 {
        return DEFAULT_TABLE_SIZE;
    }
    let mut n = requested.clamp(2, MAX_TABLE_SIZE);
    // MAX_TABLE_SIZE is prime, so this stops at or before it.
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        // Not `is_multiple_of`: that needs Rust 1.87 and the workspace MSRV is 1.85.
        if n.rem_euclid(d) == 0 {
            return false;
        }
        d += 1;
    }
    true
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 continuing from `state`.
fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// Murmur3's 64-bit finaliser: FNV's low bits avalanche poorly, and we reduce modulo M.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Stable seeded hash: FNV-1a over the seed's bytes then the data, finalised.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    fmix64(fnv1a(fnv1a(FNV_OFFSET, &seed.to_le_bytes()), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::lb::LoadBalancer;
    use std::collections::{HashMap, HashSet};

    fn backend(addr: &str, weight: usize) -> Backend {
        Backend::new_with_weight(addr, weight).expect("valid address")
    }

    fn set_of(n: usize) -> BTreeSet<Backend> {
        (0..n)
            .map(|i| backend(&format!("10.0.0.{}:8080", i + 1), 1))
            .collect()
    }

    fn build(set: &BTreeSet<Backend>) -> Arc<Maglev> {
        Arc::new(Maglev::build(set))
    }

    /// Deterministic key stream (splitmix64), so the tests never flake.
    fn keys(n: usize) -> impl Iterator<Item = [u8; 8]> {
        let mut s: u64 = 0x1234_5678_9abc_def0;
        (0..n).map(move |_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)).to_le_bytes()
        })
    }

    fn first(m: &Arc<Maglev>, key: &[u8]) -> Backend {
        m.iter(key).next().cloned().expect("non-empty table")
    }

    #[test]
    fn hash_is_fnv1a_underneath() {
        // Published FNV-1a 64 test vectors: pins the function so mappings stay stable.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_ne!(hash(SEED_OFFSET, b"x"), hash(SEED_SKIP, b"x"));
    }

    #[test]
    fn equal_weights_spread_evenly() {
        let m = build(&set_of(10));
        assert_eq!(m.table_size(), DEFAULT_TABLE_SIZE as usize);
        let mut counts: HashMap<Backend, usize> = HashMap::new();
        let n = 100_000;
        for k in keys(n) {
            *counts.entry(first(&m, &k)).or_default() += 1;
        }
        assert_eq!(counts.len(), 10);
        let mean = n as f64 / 10.0;
        for (b, c) in &counts {
            let dev = (*c as f64 - mean).abs() / mean;
            assert!(dev < 0.15, "{b:?} got {c}, mean {mean}");
        }
    }

    #[test]
    fn weights_split_proportionally() {
        let heavy = backend("10.0.0.1:80", 3);
        let light = backend("10.0.0.2:80", 1);
        let m = build(&BTreeSet::from([heavy.clone(), light.clone()]));
        let slots_heavy = m.table.iter().filter(|&&i| m.backends[i as usize] == heavy);
        let share = slots_heavy.count() as f64 / m.table_size() as f64;
        assert!((share - 0.75).abs() < 0.01, "table share {share}");

        let n = 100_000;
        let hits = keys(n).filter(|k| first(&m, k) == heavy).count();
        let share = hits as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "key share {share}");
    }

    #[test]
    fn removing_a_backend_moves_few_other_keys() {
        let all = set_of(10);
        let removed = all.iter().nth(3).cloned().expect("10 backends");
        let mut rest = all.clone();
        rest.remove(&removed);
        let (before, after) = (build(&all), build(&rest));

        let (mut kept_total, mut moved) = (0usize, 0usize);
        for k in keys(100_000) {
            let b = first(&before, &k);
            if b == removed {
                continue;
            }
            kept_total += 1;
            if first(&after, &k) != b {
                moved += 1;
            }
        }
        let frac = moved as f64 / kept_total as f64;
        assert!(
            frac < 0.20,
            "{moved}/{kept_total} keys of surviving backends moved"
        );
    }

    #[test]
    fn iterator_yields_each_backend_once_then_ends() {
        let set = set_of(5);
        let m = build(&set);
        for k in keys(50) {
            let mut it = m.iter(&k);
            let mut got = Vec::new();
            while let Some(b) = it.next() {
                got.push(b.clone());
                assert!(got.len() <= 5, "iterator did not stop");
            }
            assert_eq!(it.next(), None);
            let distinct: HashSet<_> = got.iter().collect();
            assert_eq!(got.len(), 5);
            assert_eq!(distinct.len(), 5);
            // The walk is deterministic: a fresh iterator gives the same order.
            let mut again = m.iter(&k);
            for b in &got {
                assert_eq!(again.next(), Some(b));
            }
        }
    }

    #[test]
    fn independent_builds_agree() {
        // Build the second set in reverse insertion order; only the contents may matter.
        let a = build(&set_of(7));
        let b_set: BTreeSet<Backend> = set_of(7).into_iter().rev().collect();
        let b = build(&b_set);
        assert_eq!(a.table, b.table);
        for k in keys(1_000) {
            assert_eq!(first(&a, &k), first(&b, &k));
        }
    }

    #[test]
    fn mapping_is_pinned_across_builds() {
        // Golden values: if these change, every deployed sidecar would remap its keys.
        let m = build(&set_of(3));
        let pick = |k: &[u8]| first(&m, k).addr.to_string();
        let got: Vec<String> = (0..8)
            .map(|i| pick(format!("user-{i}").as_bytes()))
            .collect();
        assert_eq!(got, GOLDEN);
    }
    const GOLDEN: [&str; 8] = [
        "10.0.0.3:8080",
        "10.0.0.1:8080",
        "10.0.0.1:8080",
        "10.0.0.1:8080",
        "10.0.0.1:8080",
        "10.0.0.2:8080",
        "10.0.0.2:8080",
        "10.0.0.1:8080",
    ];

    #[test]
    fn empty_set_yields_nothing() {
        let m = build(&BTreeSet::new());
        assert_eq!(m.table_size(), 0);
        let mut it = m.iter(b"anything");
        assert!(it.next().is_none());
        assert!(it.next().is_none());
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        // More backends than slots: only the table's backends are yielded, each once.
        let set = set_of(20);
        let cfg = MaglevConfig { table_size: 6 }; // rounded up to 7
        let m = Arc::new(Maglev::build_with_config(&set, &cfg));
        assert_eq!(m.table_size(), 7);
        let mut it = m.iter(b"k");
        let mut n = 0;
        while it.next().is_some() {
            n += 1;
        }
        assert_eq!(n, 7);

        // Extreme weights: no overflow; the light backend still owns a slot.
        let heavy = backend("10.0.0.1:80", usize::MAX);
        let light = backend("10.0.0.2:80", 0);
        let m = build(&BTreeSet::from([heavy, light.clone()]));
        assert!(m.table.iter().any(|&i| m.backends[i as usize] == light));

        for (req, want) in [
            (0, DEFAULT_TABLE_SIZE),
            (1, 2),
            (4, 5),
            (u64::MAX, MAX_TABLE_SIZE),
        ] {
            assert_eq!(effective_table_size(req), want);
        }
        assert!(is_prime(DEFAULT_TABLE_SIZE) && is_prime(MAX_TABLE_SIZE));
    }

    #[test]
    fn works_through_pingora_load_balancer() {
        let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"];
        let lb = LoadBalancer::<Maglev>::try_from_iter(addrs).expect("static backends");
        let a = lb.select(b"user-7", 256).expect("a backend");
        assert_eq!(lb.select(b"user-7", 256), Some(a.clone()));

        // Refusing the primary lands on one deterministic, different fallback.
        let fallback = lb
            .select_with(b"user-7", 256, |b, _| *b != a)
            .expect("a fallback");
        assert_ne!(fallback, a);
        let again = lb.select_with(b"user-7", 256, |b, _| *b != a);
        assert_eq!(again, Some(fallback));

        // Refusing everything ends (the iterator runs out) instead of spinning.
        assert_eq!(lb.select_with(b"user-7", 256, |_, _| false), None);

        let empty = LoadBalancer::<Maglev>::try_from_iter(Vec::<&str>::new()).expect("empty");
        assert_eq!(empty.select(b"user-7", 256), None);
    }
}
