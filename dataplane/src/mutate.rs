//! Test-only: the random-input stand-in for the fuzz targets that runs in CI.
//! Each parser of untrusted bytes feeds its seeds through [`each_mutation`].

use rand::{Rng, SeedableRng};

/// Calls `f` `rounds` times with a seed (picked at random) that had 1 to
/// `max_flips` bytes replaced at random and was then cut at a random length.
/// Deterministic for a given `rng_seed`.
pub(crate) fn each_mutation(
    seeds: &[&[u8]],
    rounds: usize,
    max_flips: usize,
    rng_seed: u64,
    mut f: impl FnMut(&[u8]),
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(rng_seed);
    for _ in 0..rounds {
        let mut s = seeds[rng.random_range(0..seeds.len())].to_vec();
        if !s.is_empty() {
            for _ in 0..rng.random_range(1..=max_flips) {
                let i = rng.random_range(0..s.len());
                s[i] = rng.random();
            }
        }
        s.truncate(rng.random_range(0..=s.len()));
        f(&s);
    }
}
