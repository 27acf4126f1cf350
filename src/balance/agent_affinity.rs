//! Agent affinity: consistent hashing of the agent id with bounded load.
//!
//! Letta agents are stateful. When messages for one agent land on different
//! replicas they contend on the same Postgres rows and conversation lock (409,
//! `StaleDataError`), and every replica warms caches for every agent. So each
//! agent gets a home backend: the owner of the first ring point after the hash
//! of its id ([`super::ring`]). Membership changes move only ~1/N of agents.
//!
//! Pure hashing lets one hot agent (or an unlucky arc) bury its backend.
//! *Consistent hashing with bounded loads* (Mirrokni, Thorup, Zadimoghaddam,
//! 2018; HAProxy's `hash-balance-factor`) caps every backend at
//! `⌈(1 + ε) × (total in flight + 1) / eligible backends⌉` (scaled by its
//! weight's share): a backend at its cap passes the request on to the next
//! distinct backend in ring order, so an agent that spills always spills to
//! the same place. Ineligible backends are skipped the same way, so a backend
//! going down re-homes only its own agents.
//!
//! Requests naming no agent go to a fallback strategy.

use rand::RngCore;

use super::ring::Ring;
use super::{view_matches, BackendSpec, LoadView, PickRequest, Strategy};

/// Consistent hashing with bounded load, plus a fallback for agent-less requests.
pub struct AgentAffinity {
    ring: Ring,
    /// `(1 + ε) × weight × n / total weight` per backend: the multiple of the
    /// average load it may hold. A heavier backend owns more of the ring, so it
    /// may hold proportionally more.
    bound: Box<[f64]>,
    fallback: Box<dyn Strategy>,
}

impl std::fmt::Debug for AgentAffinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentAffinity")
            .field("ring_points", &self.ring.len())
            .field("fallback", &self.fallback.name())
            .finish_non_exhaustive()
    }
}

impl AgentAffinity {
    /// A ring over `backends` (config order = view indices), load slack
    /// `epsilon` (> 0), and the strategy for requests without an agent id.
    pub fn new(backends: &[BackendSpec<'_>], epsilon: f64, fallback: Box<dyn Strategy>) -> Self {
        let total: f64 = backends.iter().map(|b| f64::from(b.weight.max(1))).sum();
        let n = backends.len() as f64;
        let slack = 1.0 + epsilon.max(0.0);
        AgentAffinity {
            ring: Ring::new(backends),
            bound: backends
                .iter()
                .map(|b| slack * f64::from(b.weight.max(1)) * n / total)
                .collect(),
            fallback,
        }
    }

    /// Whether backend `i`, holding `in_flight`, may take this request when
    /// `total` are in flight over `eligible` backends: whether it stays within
    /// its cap `⌈bound × (total + 1) / eligible⌉`.
    ///
    /// For an integer load, `in_flight + 1 ≤ ⌈x⌉` is `in_flight < x`, so the
    /// check needs neither `ceil` nor a division.
    fn admits(&self, i: usize, in_flight: u64, total: u64, eligible: usize) -> bool {
        (in_flight as f64) * (eligible as f64) < self.bound[i] * (total + 1) as f64
    }

    /// `in_flight / x` in the terms of [`Self::admits`]: below 1 when admitted.
    /// Ranks refused backends when none is admitted.
    fn fullness(&self, i: usize, in_flight: u64, total: u64, eligible: usize) -> f64 {
        (in_flight as f64 * eligible as f64) / (self.bound[i] * (total + 1) as f64)
    }
}

impl Strategy for AgentAffinity {
    fn name(&self) -> &'static str {
        "agent_affinity"
    }

    fn pick(
        &self,
        view: &dyn LoadView,
        req: &PickRequest<'_>,
        rng: &mut dyn RngCore,
    ) -> Option<usize> {
        let Some(agent) = req.agent_id else {
            return self.fallback.pick(view, req, rng);
        };
        let n = self.bound.len();
        if n == 0 || !view_matches(view, n) {
            return None;
        }
        let total = view.total_in_flight();
        // Start by assuming every backend is eligible: that gives the smallest
        // cap, so a backend under it is under the true cap too, and the O(n)
        // default `eligible_count` is only paid when a backend is refused.
        let mut eligible = n;
        let mut counted = false;
        let mut eligible_seen = 0;
        // The least full eligible backend, for when all are at their cap
        // (only when counters race, or with very uneven weights).
        let mut least: Option<(usize, f64)> = None;
        let mut tried = Tried::new(n);
        for i in self.ring.walk(self.ring.locate(agent)) {
            if !tried.insert(i) {
                continue;
            }
            if view.eligible(i) {
                let in_flight = view.in_flight(i);
                if self.admits(i, in_flight, total, eligible) {
                    return Some(i);
                }
                if !counted {
                    counted = true;
                    eligible = view.eligible_count().max(1);
                    if self.admits(i, in_flight, total, eligible) {
                        return Some(i);
                    }
                }
                let fullness = self.fullness(i, in_flight, total, eligible);
                if least.is_none_or(|(_, least_full)| fullness < least_full) {
                    least = Some((i, fullness));
                }
                eligible_seen += 1;
                if eligible_seen >= eligible {
                    break;
                }
            }
            if tried.len() == n {
                break;
            }
        }
        least.map(|(i, _)| i)
    }
}

/// Backends already visited on one ring walk. A walk usually ends at its
/// first or second backend, so the first few live inline; a bitset takes over
/// for long walks (most backends down or at their cap).
struct Tried {
    inline: [u32; 8],
    len: usize,
    bits: Vec<u64>,
    backends: usize,
}

impl Tried {
    fn new(backends: usize) -> Tried {
        Tried {
            inline: [0; 8],
            len: 0,
            bits: Vec::new(),
            backends,
        }
    }

    /// Adds `i`; false if it was already there.
    fn insert(&mut self, i: usize) -> bool {
        if self.bits.is_empty() {
            if self.inline[..self.len].contains(&(i as u32)) {
                return false;
            }
            if self.len < self.inline.len() {
                self.inline[self.len] = i as u32;
                self.len += 1;
                return true;
            }
            self.bits = vec![0; self.backends.div_ceil(64)];
            for j in self.inline {
                self.bits[j as usize / 64] |= 1 << (j % 64);
            }
        }
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.bits[word] & bit != 0 {
            return false;
        }
        self.bits[word] |= bit;
        self.len += 1;
        true
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
#[path = "agent_affinity_tests.rs"]
mod tests;
