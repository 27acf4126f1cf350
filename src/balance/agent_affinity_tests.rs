//! Properties of `agent_affinity`: stability, bounded load, ring-order
//! failover, and ~1/N movement on membership changes.

use rand::{Rng, RngCore};

use super::*;
use crate::balance::round_robin::RoundRobin;
use crate::balance::testing::{count_picks, names, rng, specs, TestView};

const EPSILON: f64 = 0.25;

fn affinity(names: &[String]) -> AgentAffinity {
    let weights = vec![1; names.len()];
    AgentAffinity::new(
        &specs(names, &weights),
        EPSILON,
        Box::new(RoundRobin::new(&weights)),
    )
}

/// Letta-shaped agent ids: `agent-<uuid v4>`.
fn agent_ids(count: usize, seed: u64) -> Vec<String> {
    let mut rng = rng(seed);
    (0..count)
        .map(|_| {
            let u: u128 = rng.random();
            format!(
                "agent-{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                u >> 96,
                (u >> 80) as u16,
                (u >> 68) as u16 & 0xfff,
                (u >> 52) as u16,
                u as u64 & 0xffff_ffff_ffff
            )
        })
        .collect()
}

fn pick(s: &AgentAffinity, view: &TestView, agent: &str, rng: &mut dyn RngCore) -> Option<usize> {
    s.pick(
        view,
        &PickRequest {
            agent_id: Some(agent),
        },
        rng,
    )
}

/// The backend name each agent lands on with all of `names` idle.
fn homes<'a>(names: &'a [String], agents: &[String]) -> Vec<&'a str> {
    let s = affinity(names);
    let view = TestView::idle(names.len());
    let mut rng = rng(0);
    agents
        .iter()
        .map(|a| names[pick(&s, &view, a, &mut rng).unwrap()].as_str())
        .collect()
}

#[test]
fn same_agent_same_backend() {
    let names = names(5);
    let s = affinity(&names);
    let mut view = TestView::idle(5);
    let mut rng = rng(1);
    for agent in agent_ids(1_000, 2) {
        let home = pick(&s, &view, &agent, &mut rng).unwrap();
        // Load under the bound does not move it either.
        view.backends[(home + 1) % 5].in_flight = 1;
        for _ in 0..5 {
            assert_eq!(pick(&s, &view, &agent, &mut rng), Some(home));
        }
        view.backends[(home + 1) % 5].in_flight = 0;
    }
}

#[test]
fn config_order_does_not_matter() {
    let forward = names(7);
    let mut reversed = forward.clone();
    reversed.reverse();
    let agents = agent_ids(2_000, 3);
    assert_eq!(homes(&forward, &agents), homes(&reversed, &agents));
}

#[test]
fn agents_spread_over_backends() {
    let names = names(4);
    let agents = agent_ids(10_000, 4);
    let homes = homes(&names, &agents);
    for name in &names {
        let share = homes.iter().filter(|&&h| h == name).count() as f64 / 10_000.0;
        assert!((share - 0.25).abs() < 0.06, "{name}: {share}");
    }
}

#[test]
fn requests_without_agent_use_the_fallback() {
    let s = affinity(&names(3));
    // The round-robin fallback is exact.
    assert_eq!(count_picks(&s, &TestView::idle(3), 3_000, 5), [1_000; 3]);
}

/// Ineligible backends are skipped in ring order: the pick equals the pick on
/// a ring that never had them (their points are simply not there).
#[test]
fn ineligible_skipped_in_ring_order() {
    let all = names(6);
    let s = affinity(&all);
    let mut rng = rng(6);
    for agent in agent_ids(500, 7) {
        let mut view = TestView::idle(6);
        let mut gone: Vec<usize> = Vec::new();
        for _ in 0..3 {
            let next = pick(&s, &view, &agent, &mut rng).unwrap();
            let left: Vec<String> = (0..6)
                .filter(|i| !gone.contains(i))
                .map(|i| all[i].clone())
                .collect();
            let on_smaller_ring = homes(&left, std::slice::from_ref(&agent))[0];
            assert_eq!(all[next], on_smaller_ring);
            view.backends[next].eligible = false;
            gone.push(next);
        }
    }
    let mut view = TestView::idle(6);
    view.backends.iter_mut().for_each(|b| b.eligible = false);
    assert_eq!(pick(&s, &view, "agent-x", &mut rng), None);
}

/// Adversarial load: a few hot agents, requests that never finish, and
/// completions always taken from the least loaded backend so the hot homes
/// stay hot. After every pick, the picked backend holds at most
/// ⌈(1 + ε) × total / n⌉ with `total` counting the new request.
#[test]
fn no_backend_above_the_bound() {
    for n in [3, 10] {
        let names = names(n);
        let s = affinity(&names);
        let mut view = TestView::idle(n);
        let mut rng = rng(8);
        let hot = agent_ids(3, 9);
        let hot_homes = homes(&names, &hot);
        let mut spilled = 0;
        for step in 0..5_000 {
            if step % 4 == 3 {
                if let Some(b) = view
                    .backends
                    .iter_mut()
                    .filter(|b| b.in_flight > 0)
                    .min_by_key(|b| b.in_flight)
                {
                    b.in_flight -= 1;
                }
                continue;
            }
            let a = rng.random_range(0..hot.len());
            let i = pick(&s, &view, &hot[a], &mut rng).unwrap();
            view.backends[i].in_flight += 1;
            let total: u64 = view.backends.iter().map(|b| b.in_flight).sum();
            let bound = ((1.0 + EPSILON) * total as f64 / n as f64).ceil() as u64;
            assert!(
                view.backends[i].in_flight <= bound,
                "n={n} step {step}: {view:?}"
            );
            spilled += usize::from(hot_homes[a] != names[i]);
        }
        assert!(
            spilled > 0,
            "the bound was never reached: the test tests nothing"
        );
    }
}

#[test]
fn bound_uses_eligible_backends_only() {
    // Four of five down: the survivor takes everything, it is not "over" the
    // average of five.
    let s = affinity(&names(5));
    let mut view = TestView::idle(5);
    for b in &mut view.backends[1..] {
        b.eligible = false;
    }
    view.backends[0].in_flight = 40;
    let mut rng = rng(10);
    for agent in agent_ids(100, 11) {
        assert_eq!(pick(&s, &view, &agent, &mut rng), Some(0));
    }
}

#[test]
fn heavier_backend_owns_more_and_may_hold_more() {
    let names = names(2);
    let s = AgentAffinity::new(
        &specs(&names, &[3, 1]),
        EPSILON,
        Box::new(RoundRobin::new(&[3, 1])),
    );
    let view = TestView::idle(2);
    let mut rng = rng(12);
    let agents = agent_ids(10_000, 13);
    let on_heavy = agents
        .iter()
        .filter(|a| pick(&s, &view, a, &mut rng) == Some(0))
        .count();
    assert!(
        (on_heavy as f64 / 10_000.0 - 0.75).abs() < 0.05,
        "{on_heavy}"
    );
    // With 8 in flight over 2 backends, the caps are ⌈1.25 × 9 × 1.5 / 2⌉ = 9
    // for the heavy one and ⌈1.25 × 9 × 0.5 / 2⌉ = 3 for the light one: the
    // request may make them 9 and 3, not more.
    assert!(s.admits(0, 8, 8, 2) && !s.admits(0, 9, 8, 2));
    assert!(s.admits(1, 2, 8, 2) && !s.admits(1, 3, 8, 2));
}

#[test]
fn tried_set_spills_to_a_bitset() {
    let mut t = Tried::new(100);
    for i in (0..100).rev() {
        assert!(t.insert(i));
        assert!(!t.insert(i));
    }
    assert_eq!(t.len(), 100);
}

/// Share of agents whose backend changes when one of N backends leaves (and
/// when one joins), over 10,000 Letta-shaped agent ids. Run with
/// `--nocapture` to see the numbers.
#[test]
fn movement_share() {
    const AGENTS: usize = 10_000;
    let agents = agent_ids(AGENTS, 14);
    for n in [3, 10, 100] {
        let all = names(n);
        let before = homes(&all, &agents);
        let ideal = 1.0 / n as f64;

        // Removal, for every choice of the leaving backend.
        let mut shares = Vec::with_capacity(n);
        for leaving in 0..n {
            let left: Vec<String> = all
                .iter()
                .filter(|&x| *x != all[leaving])
                .cloned()
                .collect();
            let after = homes(&left, &agents);
            let mut moved = 0;
            for (b, a) in before.iter().zip(&after) {
                if *b == all[leaving] {
                    moved += 1;
                } else {
                    assert_eq!(b, a, "an agent of a staying backend moved");
                }
            }
            shares.push(moved as f64 / AGENTS as f64);
        }
        let min = shares.iter().copied().fold(f64::INFINITY, f64::min);
        let max = shares.iter().copied().fold(0.0, f64::max);
        let last = shares[n - 1];
        assert!((0.5 * ideal..=1.5 * ideal).contains(&last), "n={n}: {last}");
        assert!(
            min >= 0.3 * ideal && max <= 2.0 * ideal,
            "n={n}: {min}..{max}"
        );

        // Addition: only agents that now belong to the newcomer move.
        let mut grown = all.clone();
        grown.push(format!("backend-{n}"));
        let after = homes(&grown, &agents);
        let mut added = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, grown[n], "an agent moved between old backends");
                added += 1;
            }
        }
        let added = added as f64 / AGENTS as f64;
        let ideal_added = 1.0 / (n + 1) as f64;
        assert!(
            (0.5 * ideal_added..=1.5 * ideal_added).contains(&added),
            "n={n}: {added}"
        );

        println!(
            "movement n={n:>3}: one backend leaves -> {:.2}% of agents move (ideal {:.2}%; \
             over all {n} choices {:.2}%..{:.2}%, others never move); \
             one joins -> {:.2}% move (ideal {:.2}%)",
            last * 100.0,
            ideal * 100.0,
            min * 100.0,
            max * 100.0,
            added * 100.0,
            ideal_added * 100.0,
        );
    }
}
