//! Where each deployment runs: a pure function of the deployment and the live,
//! verified members, so that every node computes the same placement from the
//! same view without talking to the others.
//!
//! Rules:
//! - Only live, verified members are candidates; with regions asked, only
//!   members in those regions (a deployment that asked for `eu-west` never runs
//!   elsewhere).
//! - Replicas are spread over the asked regions round-robin, one per node: with
//!   `eu-west, us-east` and three replicas, two in `eu-west` and one in
//!   `us-east`. A region with too few nodes gives its replicas to the other
//!   asked regions. Fewer candidates than replicas: every candidate runs one,
//!   and the placement says how many are missing.
//! - Within a region the choice is weighted rendezvous hashing on
//!   (deployment name, node id), the weight being spare capacity times
//!   reputation. Both are bucketed into a few steps, so the ordinary drift of a
//!   node's load does not move deployments; only a member joining or leaving,
//!   or a node crossing a step, does, and then only the deployments whose
//!   top-ranked nodes change (rendezvous moves the minimum).
//! - A full node (store at or over 95 %) is a candidate of last resort: chosen
//!   only when there is no other.

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Node id, hex.
    pub id: String,
    pub region: String,
    /// Store fullness in thousandths.
    pub load: u16,
    /// Reputation in thousandths (1000 when the ledger has no score).
    pub reputation: u16,
}

/// What a deployment asks of placement.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub name: &'a str,
    pub replicas: usize,
    pub regions: &'a [String],
}

/// Where a deployment runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// Node ids, in replica order.
    pub nodes: Vec<String>,
    /// Replicas asked for that no candidate could take.
    pub missing: usize,
}

/// Load at or above which a node is a last resort.
const FULL: u16 = 950;

/// The weight of a node: spare capacity times reputation, each in steps.
fn weight(c: &Candidate) -> f64 {
    let spare = match c.load {
        l if l >= FULL => 0.001,
        l if l >= 750 => 0.25,
        l if l >= 500 => 0.5,
        _ => 1.0,
    };
    let reputation = match c.reputation {
        r if r >= 900 => 1.0,
        r if r >= 700 => 0.75,
        r if r >= 400 => 0.5,
        _ => 0.1,
    };
    spare * reputation
}

/// Weighted rendezvous score (higher is better): `-w / ln(u)` for `u` a
/// uniform draw in (0, 1) taken from BLAKE3 of the pair.
fn score(name: &str, c: &Candidate) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(b"tessera-placement-v1");
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(c.id.as_bytes());
    let bytes = h.finalize();
    let mut top = [0u8; 8];
    top.copy_from_slice(&bytes.as_bytes()[..8]);
    // 53 bits: exactly representable; +1 keeps u off 0 and 1.
    let u = ((u64::from_le_bytes(top) >> 11) as f64 + 1.0) / ((1u64 << 53) as f64 + 2.0);
    -weight(c) / u.ln()
}

/// Candidates ranked best first for `name` (ties broken by id, so the order
/// is total and the same everywhere).
fn ranked<'a>(name: &str, pool: impl Iterator<Item = &'a Candidate>) -> Vec<&'a Candidate> {
    let mut v: Vec<(f64, &Candidate)> = pool.map(|c| (score(name, c), c)).collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    v.into_iter().map(|(_, c)| c).collect()
}

/// Places one deployment on `candidates` (live, verified members).
pub fn place(ask: Ask<'_>, candidates: &[Candidate]) -> Placement {
    let eligible: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| ask.regions.is_empty() || ask.regions.contains(&c.region))
        .collect();
    let mut nodes: Vec<String> = Vec::with_capacity(ask.replicas);
    let taken = |nodes: &Vec<String>, c: &Candidate| nodes.contains(&c.id);
    if ask.regions.is_empty() {
        for c in ranked(ask.name, eligible.iter().copied()).into_iter() {
            if nodes.len() == ask.replicas {
                break;
            }
            nodes.push(c.id.clone());
        }
    } else {
        // Each asked region's candidates, ranked; replicas dealt round-robin.
        let per_region: Vec<Vec<&Candidate>> = ask
            .regions
            .iter()
            .map(|r| {
                ranked(
                    ask.name,
                    eligible.iter().copied().filter(|c| c.region == *r),
                )
            })
            .collect();
        let mut next = vec![0usize; per_region.len()];
        let mut short = 0;
        for i in 0..ask.replicas {
            let r = i % per_region.len();
            match per_region[r].get(next[r]) {
                Some(c) => {
                    nodes.push(c.id.clone());
                    next[r] += 1;
                }
                None => short += 1,
            }
        }
        // Replicas a region could not take go to the other asked regions'
        // best remaining nodes.
        if short > 0 {
            for c in ranked(ask.name, eligible.iter().copied()) {
                if short == 0 {
                    break;
                }
                if !taken(&nodes, c) {
                    nodes.push(c.id.clone());
                    short -= 1;
                }
            }
        }
    }
    // Last resort only: full nodes come after every other in the ranking
    // already (their weight is tiny), so nothing more to do here.
    let missing = ask.replicas.saturating_sub(nodes.len());
    Placement { nodes, missing }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: usize, region: &str) -> Candidate {
        Candidate {
            id: format!("{i:064x}"),
            region: region.into(),
            load: 100,
            reputation: 1000,
        }
    }

    fn cluster(regions: &[(&str, usize)]) -> Vec<Candidate> {
        let mut out = Vec::new();
        for (r, n) in regions {
            for _ in 0..*n {
                out.push(node(out.len(), r));
            }
        }
        out
    }

    fn ask<'a>(name: &'a str, replicas: usize, regions: &'a [String]) -> Ask<'a> {
        Ask {
            name,
            replicas,
            regions,
        }
    }

    #[test]
    fn replicas_spread_over_the_asked_regions_one_per_node() {
        let nodes = cluster(&[("eu-west", 3), ("us-east", 3), ("ap-south", 3)]);
        let regions = vec!["eu-west".to_string(), "us-east".to_string()];
        for name in ["shop", "blog", "api", "docs"] {
            let p = place(ask(name, 2, &regions), &nodes);
            assert_eq!(p.missing, 0);
            let rs: Vec<&str> = p
                .nodes
                .iter()
                .map(|id| {
                    nodes
                        .iter()
                        .find(|n| n.id == *id)
                        .expect("a node")
                        .region
                        .as_str()
                })
                .collect();
            assert_eq!(rs, ["eu-west", "us-east"], "{name}");
        }
        let p = place(ask("shop", 3, &regions), &nodes);
        let mut distinct = p.nodes.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "one replica per node");
    }

    #[test]
    fn the_same_view_gives_the_same_placement_in_any_order() {
        let mut nodes = cluster(&[("eu-west", 5), ("us-east", 5)]);
        let a = place(ask("shop", 3, &[]), &nodes);
        nodes.reverse();
        assert_eq!(place(ask("shop", 3, &[]), &nodes), a);
    }

    #[test]
    fn churn_moves_few_deployments() {
        let nodes = cluster(&[("eu-west", 10)]);
        let names: Vec<String> = (0..300).map(|i| format!("zone-{i}")).collect();
        let before: Vec<Placement> = names
            .iter()
            .map(|n| place(ask(n, 2, &[]), &nodes))
            .collect();
        // One node leaves: only deployments that had it move, and each keeps
        // the replica it still has.
        let gone = nodes[3].id.clone();
        let fewer: Vec<Candidate> = nodes.iter().filter(|n| n.id != gone).cloned().collect();
        for (n, b) in names.iter().zip(&before) {
            let a = place(ask(n, 2, &[]), &fewer);
            if !b.nodes.contains(&gone) {
                assert_eq!(&a, b, "{n} moved though its nodes stayed");
            } else {
                let kept: Vec<&String> = b.nodes.iter().filter(|id| **id != gone).collect();
                assert!(kept.iter().all(|id| a.nodes.contains(id)), "{n}");
            }
        }
        // One node joins: it takes about its share (2/11 of the replicas),
        // and nothing else moves.
        let mut more = nodes.clone();
        more.push(node(99, "eu-west"));
        let mut moved = 0;
        for (n, b) in names.iter().zip(&before) {
            let a = place(ask(n, 2, &[]), &more);
            if a.nodes.iter().all(|id| b.nodes.contains(id)) {
                continue;
            }
            assert!(
                a.nodes.contains(&more[10].id),
                "{n} moved off a staying node"
            );
            moved += 1;
        }
        assert!((20..=90).contains(&moved), "{moved} of 300 moved");
        // Load drifting within a step moves nothing.
        let mut drift = nodes.clone();
        for (i, n) in drift.iter_mut().enumerate() {
            n.load = 100 + (i as u16 * 37) % 300;
        }
        for (n, b) in names.iter().zip(&before) {
            assert_eq!(&place(ask(n, 2, &[]), &drift), b);
        }
    }

    #[test]
    fn fewer_nodes_than_replicas() {
        let nodes = cluster(&[("eu-west", 2)]);
        let p = place(ask("shop", 5, &[]), &nodes);
        assert_eq!((p.nodes.len(), p.missing), (2, 3));
        assert_eq!(place(ask("shop", 1, &[]), &[]).missing, 1);
    }

    #[test]
    fn a_region_with_no_nodes() {
        let nodes = cluster(&[("eu-west", 3)]);
        // Half the replicas asked of an empty region go to the other one.
        let regions = vec!["eu-west".to_string(), "mars".to_string()];
        let p = place(ask("shop", 2, &regions), &nodes);
        assert_eq!((p.nodes.len(), p.missing), (2, 0));
        // Only an empty region: nothing runs, and the placement says so.
        let regions = vec!["mars".to_string()];
        let p = place(ask("shop", 2, &regions), &nodes);
        assert_eq!((p.nodes.len(), p.missing), (0, 2));
    }

    #[test]
    fn full_nodes_are_a_last_resort_and_reputation_weighs() {
        let mut nodes = cluster(&[("eu-west", 4)]);
        for n in &mut nodes[..3] {
            n.load = 990;
        }
        for name in ["a", "b", "c", "d", "e"] {
            assert_eq!(
                place(ask(name, 1, &[]), &nodes).nodes,
                [nodes[3].id.clone()]
            );
        }
        // Every node full: still placed (on full nodes), nothing missing.
        for n in &mut nodes {
            n.load = 1000;
        }
        assert_eq!(place(ask("a", 2, &[]), &nodes).missing, 0);
        // A node with a poor reputation is chosen far less often.
        let mut nodes = cluster(&[("eu-west", 2)]);
        nodes[0].reputation = 100;
        let firsts = (0..400)
            .filter(|i| place(ask(&format!("z{i}"), 1, &[]), &nodes).nodes[0] == nodes[0].id)
            .count();
        assert!(
            firsts < 80,
            "the poorly reputed node was first for {firsts} of 400"
        );
    }
}
