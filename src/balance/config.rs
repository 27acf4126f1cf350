//! The `[balancer]` config section: which strategy, and the knobs of the
//! agent-aware ones.
//!
//! Lives beside the strategies (not in `crate::config`) so a new strategy and its
//! options are added in one folder; the top-level config only embeds it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which selection algorithm to use (`[balancer] strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Weighted round robin: exact shares, ignores load.
    #[default]
    RoundRobin,
    /// Fewest requests in flight per unit of weight.
    LeastConnections,
    /// Weighted random.
    Random,
    /// Power of two choices on peak-EWMA latency × (in flight + 1).
    LeastLatency,
    /// Consistent hashing of the agent id with bounded load.
    AgentAffinity,
}

impl StrategyKind {
    /// The config spelling, also used as the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::LeastConnections => "least_connections",
            StrategyKind::Random => "random",
            StrategyKind::LeastLatency => "least_latency",
            StrategyKind::AgentAffinity => "agent_affinity",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[balancer]`: the strategy and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancerConfig {
    /// The selection algorithm.
    pub strategy: StrategyKind,
    /// Header naming the agent for routes whose path does not
    /// (`/v1/agents/{agent_id}/…` is always recognised).
    pub affinity_header: String,
    /// Load slack of `agent_affinity`: a backend already holding more than
    /// (1 + ε) × the average in flight passes new agents on along the ring.
    /// Small ε = even load, more agents off their home; large ε = stickier.
    pub affinity_epsilon: f64,
    /// Strategy for requests that name no agent (anything but `agent_affinity`).
    pub affinity_fallback: StrategyKind,
    /// `least_connections` scans every backend up to this many backends and
    /// switches to power of two choices above it, keeping picks O(1).
    pub scan_threshold: usize,
    /// Time constant of the peak-EWMA latency estimate: how fast old
    /// observations (and error penalties) fade.
    #[serde(with = "humantime_serde")]
    pub ewma_decay: Duration,
    /// Latency recorded for a failed answer that came back faster than this, so
    /// a backend failing fast does not look fast to `least_latency`.
    #[serde(with = "humantime_serde")]
    pub error_penalty: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            strategy: StrategyKind::RoundRobin,
            affinity_header: "x-agent-id".into(),
            affinity_epsilon: 0.25,
            affinity_fallback: StrategyKind::LeastConnections,
            scan_threshold: 8,
            ewma_decay: Duration::from_secs(10),
            error_penalty: Duration::from_secs(1),
        }
    }
}

impl BalancerConfig {
    /// Checks what the types cannot; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        // NaN is not finite, so it is rejected here too.
        if !self.affinity_epsilon.is_finite() || self.affinity_epsilon <= 0.0 {
            return Err(format!(
                "affinity_epsilon must be a finite number above 0 (got {})",
                self.affinity_epsilon
            ));
        }
        if self.affinity_fallback == StrategyKind::AgentAffinity {
            return Err(
                "affinity_fallback cannot be agent_affinity (requests without \
                        an agent id need another strategy)"
                    .into(),
            );
        }
        if http::HeaderName::from_bytes(self.affinity_header.as_bytes()).is_err() {
            return Err(format!(
                "affinity_header {:?} is not a valid header name",
                self.affinity_header
            ));
        }
        if self.ewma_decay.is_zero() {
            return Err("ewma_decay must be above 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<BalancerConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg, BalancerConfig::default());
        assert_eq!(cfg.strategy, StrategyKind::RoundRobin);
        assert_eq!(cfg.affinity_header, "x-agent-id");
        assert_eq!(cfg.affinity_fallback, StrategyKind::LeastConnections);
        assert_eq!(cfg.scan_threshold, 8);
        assert_eq!(cfg.ewma_decay, Duration::from_secs(10));
        assert_eq!(cfg.error_penalty, Duration::from_secs(1));
        cfg.validate().unwrap();
    }

    #[test]
    fn parses_every_key() {
        let cfg = parse(
            r#"
            strategy = "agent_affinity"
            affinity_header = "x-letta-agent"
            affinity_epsilon = 0.5
            affinity_fallback = "least_latency"
            scan_threshold = 16
            ewma_decay = "30s"
            error_penalty = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.strategy, StrategyKind::AgentAffinity);
        assert_eq!(cfg.affinity_fallback, StrategyKind::LeastLatency);
        assert_eq!(cfg.affinity_epsilon, 0.5);
        assert_eq!(cfg.scan_threshold, 16);
        assert_eq!(cfg.ewma_decay, Duration::from_secs(30));
        assert_eq!(cfg.error_penalty, Duration::from_millis(250));
        cfg.validate().unwrap();
    }

    #[test]
    fn strategy_names_round_trip() {
        for kind in [
            StrategyKind::RoundRobin,
            StrategyKind::LeastConnections,
            StrategyKind::Random,
            StrategyKind::LeastLatency,
            StrategyKind::AgentAffinity,
        ] {
            let cfg = parse(&format!("strategy = \"{kind}\"")).unwrap();
            assert_eq!(cfg.strategy, kind);
        }
    }

    #[test]
    fn rejects_unknown_keys_and_strategies() {
        let err = parse("stratgey = \"random\"").unwrap_err();
        assert!(err.contains("stratgey"), "{err}");
        let err = parse("strategy = \"fastest\"").unwrap_err();
        assert!(err.contains("fastest"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let bad = |edit: fn(&mut BalancerConfig)| {
            let mut cfg = BalancerConfig::default();
            edit(&mut cfg);
            cfg.validate().unwrap_err()
        };
        assert!(bad(|c| c.affinity_epsilon = 0.0).contains("affinity_epsilon"));
        assert!(bad(|c| c.affinity_epsilon = f64::NAN).contains("affinity_epsilon"));
        assert!(bad(|c| c.affinity_epsilon = f64::INFINITY).contains("affinity_epsilon"));
        assert!(bad(|c| c.affinity_fallback = StrategyKind::AgentAffinity)
            .contains("affinity_fallback"));
        assert!(bad(|c| c.affinity_header = "x agent".into()).contains("affinity_header"));
        assert!(bad(|c| c.ewma_decay = Duration::ZERO).contains("ewma_decay"));
    }
}
