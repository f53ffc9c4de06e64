//! Vivaldi network coordinates (Dabek et al., SIGCOMM 2004): each node keeps a
//! point in a small Euclidean space plus a height (its access-link delay) and an
//! error estimate, and moves it after every RTT sample so that distances between
//! points predict round-trip times. A node can then estimate its RTT to any
//! member whose coordinate it has heard, without probing it. Sans-IO.

use serde::{Deserialize, Serialize};

const DIMS: usize = 3;
/// Error weight constant (`c_e` in the paper).
const CE: f64 = 0.25;
/// Movement constant (`c_c`).
const CC: f64 = 0.25;
const MIN_HEIGHT_MS: f64 = 0.01;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Coord {
    pub pos: [f64; DIMS],
    /// Milliseconds added to every distance (the node's own access delay).
    pub height: f64,
    /// Relative error estimate, 1.0 when new, shrinking as samples agree.
    pub error: f64,
}

impl Default for Coord {
    fn default() -> Self {
        Coord {
            pos: [0.0; DIMS],
            height: MIN_HEIGHT_MS,
            error: 1.0,
        }
    }
}

impl Coord {
    /// Predicted RTT in milliseconds to a node at `other`.
    pub fn distance(&self, other: &Coord) -> f64 {
        let d: f64 = self
            .pos
            .iter()
            .zip(&other.pos)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        d + self.height + other.height
    }

    /// Moves this coordinate after measuring `rtt_ms` to a node at `remote`.
    /// `jitter` (in 0..1) breaks the symmetry when two points coincide.
    pub fn update(&mut self, rtt_ms: f64, remote: &Coord, jitter: f64) {
        if !rtt_ms.is_finite() || rtt_ms <= 0.0 {
            return;
        }
        let dist = self.distance(remote);
        let w = self.error / (self.error + remote.error).max(1e-9);
        let rel_err = (dist - rtt_ms).abs() / rtt_ms;
        self.error = (rel_err * CE * w + self.error * (1.0 - CE * w)).clamp(0.01, 1.5);
        let delta = CC * w;
        // Unit vector from the remote towards us (random if we coincide).
        let mut dir = [0.0; DIMS];
        let mut norm = 0.0;
        for (i, d) in dir.iter_mut().enumerate() {
            *d = self.pos[i] - remote.pos[i];
            norm += *d * *d;
        }
        let mut norm = norm.sqrt();
        if norm < 1e-9 {
            for (i, d) in dir.iter_mut().enumerate() {
                *d = ((jitter * 997.0 + i as f64 * 13.0).sin()).max(-1.0);
            }
            norm = dir.iter().map(|d| d * d).sum::<f64>().sqrt().max(1e-9);
        }
        let force = delta * (rtt_ms - dist);
        for (i, d) in dir.iter().enumerate() {
            self.pos[i] += force * d / norm;
        }
        self.height = (self.height + force * (self.height + remote.height) / (dist.max(1e-9)))
            .max(MIN_HEIGHT_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes on a plane plus access delays; RTT = 2 × distance + both delays.
    #[test]
    fn coordinates_learn_to_predict_rtts() {
        let places: Vec<([f64; 2], f64)> = (0..12)
            .map(|i| {
                let a = i as f64 * 0.7;
                (
                    [40.0 * a.cos() + i as f64, 30.0 * a.sin()],
                    1.0 + (i % 3) as f64,
                )
            })
            .collect();
        let rtt = |a: usize, b: usize| {
            let (pa, ha) = places[a];
            let (pb, hb) = places[b];
            ((pa[0] - pb[0]).powi(2) + (pa[1] - pb[1]).powi(2)).sqrt() + ha + hb
        };
        let mut coords = vec![Coord::default(); places.len()];
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let a = (next() % places.len() as u64) as usize;
            let b = (next() % places.len() as u64) as usize;
            if a == b {
                continue;
            }
            let remote = coords[b];
            let jitter = (next() % 1000) as f64 / 1000.0;
            coords[a].update(rtt(a, b), &remote, jitter);
        }
        // Median relative error of the predictions, over all pairs.
        let mut errs = Vec::new();
        for a in 0..places.len() {
            for b in 0..places.len() {
                if a != b {
                    let real = rtt(a, b);
                    errs.push((coords[a].distance(&coords[b]) - real).abs() / real);
                }
            }
        }
        errs.sort_by(f64::total_cmp);
        let median = errs[errs.len() / 2];
        assert!(median < 0.15, "median relative error {median}");
    }

    #[test]
    fn bad_samples_change_nothing() {
        let mut c = Coord::default();
        let before = c;
        c.update(f64::NAN, &Coord::default(), 0.3);
        c.update(-1.0, &Coord::default(), 0.3);
        assert_eq!(c, before);
    }
}
