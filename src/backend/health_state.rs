//! The active health verdict of one backend: a pure threshold state machine.
//!
//! N consecutive failed probes mark a backend down, M consecutive good ones bring
//! it back. [`HealthState::observe`] says whether the verdict flipped, so the
//! caller logs transitions once instead of every probe (pingora's
//! `observe_health`, rpxy's counter).

/// Consecutive results and the current verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    up: bool,
    streak: u32,
}

/// A change of verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentDown,
    CameUp,
}

impl Default for HealthState {
    /// Backends start up: traffic flows before the first probe, and passive
    /// checks catch a dead one at once.
    fn default() -> Self {
        HealthState {
            up: true,
            streak: 0,
        }
    }
}

impl HealthState {
    /// Whether the backend is considered up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one probe result; returns the transition if the verdict flipped.
    pub fn observe(
        &mut self,
        ok: bool,
        unhealthy_threshold: u32,
        healthy_threshold: u32,
    ) -> Option<Transition> {
        if ok == self.up {
            // Result agrees with the verdict: any streak toward the other side ends.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up {
            unhealthy_threshold
        } else {
            healthy_threshold
        };
        if self.streak < needed.max(1) {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok {
            Transition::CameUp
        } else {
            Transition::WentDown
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_flip_the_verdict_once() {
        let mut h = HealthState::default();
        let run = |h: &mut HealthState, seq: &[bool]| -> Vec<Option<Transition>> {
            seq.iter().map(|ok| h.observe(*ok, 3, 2)).collect()
        };
        // Two failures, a success: streak broken, still up.
        assert_eq!(run(&mut h, &[false, false, true]), [None, None, None]);
        assert!(h.is_up());
        // Three in a row: down, reported once.
        assert_eq!(
            run(&mut h, &[false, false, false, false]),
            [None, None, Some(Transition::WentDown), None]
        );
        assert!(!h.is_up());
        // One success is not enough, two are.
        assert_eq!(
            run(&mut h, &[true, false, true, true, true]),
            [None, None, None, Some(Transition::CameUp), None]
        );
        assert!(h.is_up());
    }
}
