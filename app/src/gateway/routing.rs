//! Choosing a deployment within a `model_name` group, by LiteLLM's `routing_strategy`:
//! `simple-shuffle` (random, weighted), `least-busy` (fewest requests in flight),
//! `latency-based-routing` (lowest recent latency; untried deployments first),
//! `usage-based-routing` (fewest tokens this minute) and `cost-based-routing` (cheapest
//! per token). Every strategy skips deployments at their own `rpm`/`tpm` this minute.
//! Ties are broken at random, so equal deployments share the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;

use super::Deployment;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    SimpleShuffle,
    LeastBusy,
    LatencyBased,
    UsageBased,
    CostBased,
}

impl Strategy {
    /// LiteLLM's names for the strategies.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "simple-shuffle" => Strategy::SimpleShuffle,
            "least-busy" => Strategy::LeastBusy,
            "latency-based-routing" => Strategy::LatencyBased,
            "usage-based-routing" | "usage-based-routing-v2" => Strategy::UsageBased,
            "cost-based-routing" => Strategy::CostBased,
            _ => return None,
        })
    }
}

/// What routing knows of one deployment.
#[derive(Default)]
pub struct DeploymentStats {
    in_flight: Arc<AtomicU64>,
    /// Exponentially weighted latency in microseconds; 0 until measured.
    latency_us: AtomicU64,
    /// The current minute (Unix seconds / 60), and the requests and tokens sent in it.
    minute: Mutex<(i64, u64, u64)>,
}

/// Weight of the newest latency in the moving average.
const LATENCY_WEIGHT: f64 = 0.3;

impl DeploymentStats {
    /// Counts a request sent now; it is in flight until the guard drops.
    pub fn start(&self, now_secs: i64) -> InFlight {
        let mut minute = self.minute.lock();
        roll(&mut minute, now_secs);
        minute.1 += 1;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    pub fn record_latency(&self, latency: Duration) {
        let sample = latency.as_micros().max(1) as f64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            LATENCY_WEIGHT * sample + (1.0 - LATENCY_WEIGHT) * old as f64
        };
        self.latency_us.store(new as u64, Ordering::Relaxed);
    }

    pub fn record_tokens(&self, tokens: u64, now_secs: i64) {
        let mut minute = self.minute.lock();
        roll(&mut minute, now_secs);
        minute.2 += tokens;
    }

    /// Requests and tokens in the current minute.
    fn usage(&self, now_secs: i64) -> (u64, u64) {
        let mut minute = self.minute.lock();
        roll(&mut minute, now_secs);
        (minute.1, minute.2)
    }
}

fn roll(minute: &mut (i64, u64, u64), now_secs: i64) {
    let current = now_secs.div_euclid(60);
    if minute.0 != current {
        *minute = (current, 0, 0);
    }
}

/// A request in flight on a deployment, for `least-busy`.
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One candidate: the deployment, its stats and its price per token.
pub struct Candidate<'a> {
    pub deployment: &'a Deployment,
    pub stats: &'a DeploymentStats,
    pub price_per_token: f64,
}

/// The deployment to try next, or `None` if every candidate is at its rpm/tpm limit.
pub fn choose<'a>(
    strategy: Strategy,
    candidates: &[Candidate<'a>],
    now_secs: i64,
) -> Option<&'a Deployment> {
    let open: Vec<&Candidate<'a>> = candidates
        .iter()
        .filter(|c| {
            let (requests, tokens) = c.stats.usage(now_secs);
            c.deployment.rpm.is_none_or(|limit| requests < limit)
                && c.deployment.tpm.is_none_or(|limit| tokens < limit)
        })
        .collect();
    let score = |c: &Candidate<'_>| -> f64 {
        match strategy {
            Strategy::SimpleShuffle => 0.0,
            Strategy::LeastBusy => c.stats.in_flight.load(Ordering::Relaxed) as f64,
            Strategy::LatencyBased => c.stats.latency_us.load(Ordering::Relaxed) as f64,
            Strategy::UsageBased => c.stats.usage(now_secs).1 as f64,
            Strategy::CostBased => c.price_per_token,
        }
    };
    if strategy == Strategy::SimpleShuffle {
        return weighted(&open);
    }
    let best = open.iter().map(|c| score(c)).fold(f64::INFINITY, f64::min);
    let tied: Vec<&Candidate<'a>> = open.into_iter().filter(|c| score(c) <= best).collect();
    weighted(&tied)
}

/// Picks with probability proportional to `weight`.
fn weighted<'a>(candidates: &[&Candidate<'a>]) -> Option<&'a Deployment> {
    let total: f64 = candidates.iter().map(|c| c.deployment.weight).sum();
    let mut at = rand::rng().random_range(0.0..total.max(f64::MIN_POSITIVE));
    for candidate in candidates {
        if at < candidate.deployment.weight {
            return Some(candidate.deployment);
        }
        at -= candidate.deployment.weight;
    }
    candidates.last().map(|c| c.deployment)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn deployment(id: usize, weight: f64) -> Deployment {
        Deployment {
            id,
            model_name: "m".into(),
            provider: "openai".into(),
            upstream_model: format!("d{id}"),
            weight,
            ..Deployment::default()
        }
    }

    fn pick_counts(strategy: Strategy, candidates: &[Candidate<'_>], now: i64) -> [usize; 3] {
        let mut counts = [0; 3];
        for _ in 0..3000 {
            if let Some(d) = choose(strategy, candidates, now) {
                counts[d.id] += 1;
            }
        }
        counts
    }

    #[test]
    fn each_strategy_prefers_what_it_should() {
        let ds = [deployment(0, 1.0), deployment(1, 3.0), deployment(2, 1.0)];
        let stats: Vec<DeploymentStats> = (0..3).map(|_| DeploymentStats::default()).collect();
        let candidates: Vec<Candidate<'_>> = ds
            .iter()
            .zip(&stats)
            .zip([3.0, 1.0, 2.0])
            .map(|((deployment, stats), price)| Candidate {
                deployment,
                stats,
                price_per_token: price,
            })
            .collect();
        let shuffle = pick_counts(Strategy::SimpleShuffle, &candidates, 0);
        assert!((1600..2000).contains(&shuffle[1]), "{shuffle:?}");
        assert_eq!(
            pick_counts(Strategy::CostBased, &candidates, 0),
            [0, 3000, 0]
        );
        let _busy = (stats[1].start(0), stats[2].start(0));
        assert_eq!(
            pick_counts(Strategy::LeastBusy, &candidates, 0),
            [3000, 0, 0]
        );
        stats[0].record_latency(Duration::from_millis(50));
        stats[1].record_latency(Duration::from_millis(5));
        // Deployment 2 was never measured: it is tried first.
        assert_eq!(
            pick_counts(Strategy::LatencyBased, &candidates, 0),
            [0, 0, 3000]
        );
        stats[2].record_latency(Duration::from_millis(9));
        assert_eq!(
            pick_counts(Strategy::LatencyBased, &candidates, 0),
            [0, 3000, 0]
        );
        stats[0].record_tokens(10, 0);
        stats[1].record_tokens(500, 0);
        stats[2].record_tokens(20, 0);
        assert_eq!(
            pick_counts(Strategy::UsageBased, &candidates, 0),
            [3000, 0, 0]
        );
        // A new minute forgets the usage: all tie again.
        let fresh = pick_counts(Strategy::UsageBased, &candidates, 60);
        assert!(fresh.iter().all(|&n| n > 0), "{fresh:?}");
    }

    #[test]
    fn deployments_at_their_rpm_or_tpm_are_skipped() {
        let mut limited = deployment(0, 1.0);
        limited.rpm = Some(2);
        let mut tokens = deployment(1, 1.0);
        tokens.tpm = Some(100);
        let stats = [DeploymentStats::default(), DeploymentStats::default()];
        let candidates = [
            Candidate {
                deployment: &limited,
                stats: &stats[0],
                price_per_token: 0.0,
            },
            Candidate {
                deployment: &tokens,
                stats: &stats[1],
                price_per_token: 0.0,
            },
        ];
        drop((stats[0].start(0), stats[0].start(0)));
        stats[1].record_tokens(100, 0);
        assert!(choose(Strategy::SimpleShuffle, &candidates, 0).is_none());
        assert!(choose(Strategy::SimpleShuffle, &candidates, 60).is_some());
        assert!(Strategy::parse("least-busy") == Some(Strategy::LeastBusy));
        assert!(Strategy::parse("nope").is_none());
    }
}
