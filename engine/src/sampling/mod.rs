//! Sampling: the parameters a request carries, the logits processors (penalties,
//! temperature, top-k, top-p, min-p) and seeded sampling, plus stop-string matching.

mod stop;

pub use stop::{StopMatcher, StopOutcome};

use rand::SeedableRng;
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::rngs::StdRng;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no limit.
    pub top_k: usize,
    pub min_p: f32,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: f32,
    /// Report each sampled token's log-probability and this many top alternatives.
    pub logprobs: Option<usize>,
}

/// Most alternatives a request may ask for per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The log-probability of a sampled token under the model's raw distribution (before
/// penalties and temperature, as vLLM reports by default), with the most likely tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// One sampling step's result.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub token: u32,
    pub logprob: Option<TokenLogprob>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |param: &'static str, message: &str| {
            Err(EngineError::InvalidParameter {
                param,
                message: message.to_string(),
            })
        };
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", "must be between 0 and 2");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be between 0 and 1");
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad("presence_penalty", "must be between -2 and 2");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad("frequency_penalty", "must be between -2 and 2");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return bad("repetition_penalty", "must be in (0, 10]");
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return bad("top_logprobs", "must be at most 20");
        }
        Ok(())
    }
}

/// A sampling step a device can run on its own, so that only the token id comes back: the
/// filters without penalties or log-probabilities (those need the host's view of the
/// logits), and a seed that, with `step`, keys the draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceSampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no limit.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub seed: u64,
    /// Tokens the sequence sampled before this one.
    pub step: u32,
}

impl SamplingParams {
    /// These parameters in their on-device form, unless they need the host.
    pub fn on_device(&self, seed: u64, step: u32) -> Option<DeviceSampling> {
        let host_only = self.logprobs.is_some()
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0;
        (!host_only).then_some(DeviceSampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed,
            step,
        })
    }
}

/// Per-sequence sampler state: the RNG and token counts for the penalties.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Counts of generated tokens (frequency/presence penalties).
    generated_counts: std::collections::HashMap<u32, u32>,
    /// Tokens seen in prompt or output (repetition penalty).
    seen: std::collections::HashSet<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            generated_counts: Default::default(),
            seen: prompt.iter().copied().collect(),
        }
    }

    /// Records a token sampled elsewhere (on the device), as `sample` records its own.
    pub fn record(&mut self, token: u32) {
        *self.generated_counts.entry(token).or_insert(0) += 1;
        self.seen.insert(token);
    }

    /// Picks the next token from `logits` (modified in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        let log_probs = self.params.logprobs.map(|top| (top, log_softmax(logits)));
        self.apply_penalties(logits);
        let token = if self.params.temperature <= 0.0 {
            crate::model::llama::argmax(logits)
        } else {
            self.sample_random(logits)
        };
        self.record(token);
        let logprob = log_probs.map(|(top, log_probs)| TokenLogprob {
            token,
            logprob: log_probs
                .get(token as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY),
            top: top_k(&log_probs, top),
        });
        Sampled { token, logprob }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &count) in &self.generated_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
    }

    fn sample_random(&mut self, logits: &[f32]) -> u32 {
        let kept = self.params.candidates(logits);
        if kept.is_empty() {
            return crate::model::llama::argmax(logits);
        }
        match WeightedIndex::new(kept.iter().map(|&(_, q)| q)) {
            Ok(dist) => kept[dist.sample(&mut self.rng)].0,
            Err(_) => kept[0].0,
        }
    }
}

impl SamplingParams {
    /// The tokens a random draw may pick from `logits` (after penalties), most likely
    /// first, with their probabilities: temperature, then top-k, then min-p relative to the
    /// top token, then top-p, with probabilities normalised within the top-k. Empty when
    /// no logit is finite. The GPU sampler keeps the same set (`backend/cuda/kernels`).
    pub fn candidates(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / self.temperature))
            .collect();
        if candidates.is_empty() {
            return candidates;
        }
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.top_k > 0 {
            candidates.truncate(self.top_k);
        }
        let max = candidates[0].1;
        for c in candidates.iter_mut() {
            c.1 = (c.1 - max).exp();
        }
        let total: f32 = candidates.iter().map(|c| c.1).sum();
        candidates.iter_mut().for_each(|c| c.1 /= total);
        if self.min_p > 0.0 {
            let floor = candidates[0].1 * self.min_p;
            let keep = candidates
                .iter()
                .take_while(|c| c.1 >= floor)
                .count()
                .max(1);
            candidates.truncate(keep);
        }
        if self.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = candidates.len();
            for (i, c) in candidates.iter().enumerate() {
                cumulative += c.1;
                if cumulative >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep);
        }
        candidates
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    logits.iter().map(|l| l - log_sum).collect()
}

/// The `k` largest entries, largest first; ties go to the lower token id.
fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut indexed: Vec<(u32, f32)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = k.min(indexed.len());
    indexed.select_nth_unstable_by(k - 1, order);
    indexed.truncate(k);
    indexed.sort_by(order);
    indexed
}
