//! `Sequence`: one request inside the engine thread — its KV cache, sampler,
//! detokenizer and stop matcher, and the channel its text goes out on.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::error::EngineError;
use crate::model::kv_cache::{BLOCK_SIZE, BlockTable, blocks_for};
use crate::model::llama::Segment;
use crate::sampling::{DeviceSampling, Sampled, Sampler, StopMatcher, StopOutcome, TokenLogprob};
use crate::scheduler::blocks::{BlockHash, chain_hash};
use crate::scheduler::{
    Completion, FinishReason, GenerationEvent, GenerationRequest, GenerationTimings,
};
use crate::tokenizer::{IncrementalDecoder, TextTokenizer};

pub(super) enum StepOutcome {
    Continue,
    Finished,
}

pub(super) struct Sequence {
    request: GenerationRequest,
    events: mpsc::UnboundedSender<GenerationEvent>,
    submitted: Instant,
    first_scheduled: Option<Instant>,
    /// Prompt tokens the prefix cache held at first admission.
    cached_prompt_tokens: Option<usize>,
    first_token: Option<Instant>,
    cache: BlockTable,
    /// All tokens fed or to be fed: the prompt, then each sampled token.
    tokens: Vec<u32>,
    generated: usize,
    sampler: Sampler,
    /// Keys the draws of sampling on the device: the request's seed, or a random one.
    device_seed: u64,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    /// Log-probabilities not yet sent (their text may be held back by the stop matcher).
    pending_logprobs: Vec<TokenLogprob>,
    /// Chained hashes of the prompt's full blocks, computed once.
    prompt_hashes: Option<Vec<BlockHash>>,
    /// Prompt blocks already offered to the prefix cache.
    registered_blocks: usize,
}

impl Sequence {
    pub(super) fn new(
        request: GenerationRequest,
        events: mpsc::UnboundedSender<GenerationEvent>,
    ) -> Self {
        let sampler = Sampler::new(request.sampling.clone(), &request.prompt);
        let stop = StopMatcher::new(request.stop.clone());
        Self {
            device_seed: request.sampling.seed.unwrap_or_else(rand::random),
            tokens: request.prompt.clone(),
            request,
            events,
            submitted: Instant::now(),
            first_scheduled: None,
            cached_prompt_tokens: None,
            first_token: None,
            cache: BlockTable::default(),
            generated: 0,
            sampler,
            decoder: IncrementalDecoder::default(),
            stop,
            pending_logprobs: Vec::new(),
            prompt_hashes: None,
            registered_blocks: 0,
        }
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// Tokens already in the KV cache.
    pub(super) fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Blocks to add so that `n_new` more tokens fit.
    pub(super) fn blocks_missing(&self, n_new: usize) -> usize {
        blocks_for(self.cached() + n_new).saturating_sub(self.cache.blocks.len())
    }

    pub(super) fn add_blocks(&mut self, blocks: impl IntoIterator<Item = u32>) {
        self.cache.blocks.extend(blocks);
    }

    /// Empties the cache (finished, cancelled or preempted) and returns its blocks.
    /// A preempted sequence recomputes its tokens when it runs again.
    pub(super) fn release_blocks(&mut self) -> Vec<u32> {
        self.registered_blocks = 0;
        self.cache.take_blocks()
    }

    pub(super) fn group(&self) -> Option<u64> {
        self.request.group
    }

    /// Still computing its prompt (not yet generating).
    pub(super) fn is_prefilling_prompt(&self) -> bool {
        self.cached() < self.prompt_len()
    }

    pub(super) fn prompt_len(&self) -> usize {
        self.request.prompt.len()
    }

    /// The chained hashes of the prompt's full blocks.
    pub(super) fn prompt_block_hashes(&mut self) -> Vec<BlockHash> {
        let prompt = &self.request.prompt;
        self.prompt_hashes
            .get_or_insert_with(|| {
                let mut parent = None;
                prompt
                    .chunks_exact(BLOCK_SIZE)
                    .map(|tokens| {
                        let hash = chain_hash(parent, tokens);
                        parent = Some(hash);
                        hash
                    })
                    .collect()
            })
            .clone()
    }

    /// Records how much of the prompt the prefix cache held; the first admission counts.
    pub(super) fn note_prefix_hit(&mut self, tokens: usize) {
        self.cached_prompt_tokens
            .get_or_insert(tokens.min(self.request.prompt.len()));
    }

    /// Starts from `tokens` prompt tokens already cached in `blocks`.
    pub(super) fn start_from_cached_prefix(&mut self, blocks: Vec<u32>, tokens: usize) {
        self.registered_blocks = blocks.len();
        self.cache = BlockTable::with_cached_prefix(blocks, tokens);
    }

    /// Blocks of whole prompt units (`unit` tokens: a block, or a chunk where the runner's
    /// rows are not independent) computed since the last call, with their hashes. Only
    /// units wholly inside the prompt qualify.
    pub(super) fn newly_complete_prompt_blocks(&mut self, unit: usize) -> Vec<(u32, BlockHash)> {
        let whole_units = self.cached().min(self.prompt_len()) / unit;
        let complete_blocks = whole_units * unit / BLOCK_SIZE;
        if complete_blocks <= self.registered_blocks {
            return Vec::new();
        }
        let hashes = self.prompt_block_hashes();
        let from = self.registered_blocks;
        self.registered_blocks = complete_blocks;
        (from..complete_blocks)
            .map(|b| (self.cache.blocks[b], hashes[b]))
            .collect()
    }

    /// True once the whole prompt is in the cache: the next step feeds one sampled token.
    pub(super) fn is_decoding(&self) -> bool {
        self.cached() + 1 >= self.tokens.len() && self.cached() >= self.request.prompt.len()
    }

    pub(super) fn prefill_remaining(&self) -> usize {
        self.tokens.len() - self.cached()
    }

    /// How many tokens the next prefill segment feeds. The prompt goes in chunks ending at
    /// multiples of `chunk`; tokens generated before a preemption are replayed one per step,
    /// exactly as they were first decoded. Either way the computation has the same shapes
    /// as the first time, so a preempted sequence continues with the very same output.
    pub(super) fn next_prefill_len(&self, chunk: usize) -> usize {
        let cached = self.cached();
        let prompt = self.request.prompt.len();
        if cached >= prompt {
            1
        } else {
            (prompt - cached).min(chunk - cached % chunk)
        }
    }

    pub(super) fn mark_scheduled(&mut self, now: Instant) {
        self.first_scheduled.get_or_insert(now);
    }

    /// The next `count` uncached tokens, as a forward-pass segment.
    pub(super) fn segment(&mut self, count: usize) -> Segment<'_> {
        let start = self.cached();
        Segment {
            cache: &mut self.cache,
            tokens: &self.tokens[start..start + count],
        }
    }

    /// The next token's sampling in its on-device form, unless it needs the host.
    pub(super) fn device_sampling(&self) -> Option<DeviceSampling> {
        let step = u32::try_from(self.generated).unwrap_or(u32::MAX);
        self.request.sampling.on_device(self.device_seed, step)
    }

    /// Samples from the logits of the last fed token and streams the result.
    pub(super) fn accept_logits(
        &mut self,
        logits: &mut [f32],
        tokenizer: &TextTokenizer,
    ) -> StepOutcome {
        let sampled = self.sampler.sample(logits);
        self.accept(sampled, tokenizer)
    }

    /// Takes a token sampled on the device and streams the result.
    pub(super) fn accept_token(&mut self, token: u32, tokenizer: &TextTokenizer) -> StepOutcome {
        self.sampler.record(token);
        let sampled = Sampled {
            token,
            logprob: None,
        };
        self.accept(sampled, tokenizer)
    }

    fn accept(&mut self, sampled: Sampled, tokenizer: &TextTokenizer) -> StepOutcome {
        let token = sampled.token;
        self.generated += 1;
        let now = Instant::now();
        self.first_token.get_or_insert(now);

        let end_of_turn =
            !self.request.ignore_eos && tokenizer.special().end_of_turn.contains(&token);
        if end_of_turn {
            let tail = self.stop.finish();
            self.send_text(tail);
            return self.finish(FinishReason::Stop);
        }
        self.pending_logprobs.extend(sampled.logprob);
        self.tokens.push(token);
        let text = match self.decoder.push(tokenizer, token) {
            Ok(text) => text,
            Err(error) => {
                let _ = self.events.send(GenerationEvent::Failed(error));
                return StepOutcome::Finished;
            }
        };
        match self.stop.push(&text) {
            StopOutcome::Stopped(text) => {
                self.send_text(text);
                self.finish(FinishReason::Stop)
            }
            StopOutcome::Continue(text) => {
                self.send_text(text);
                if self.generated >= self.request.max_new_tokens {
                    let tail = self.stop.finish();
                    self.send_text(tail);
                    self.finish(FinishReason::Length)
                } else {
                    StepOutcome::Continue
                }
            }
        }
    }

    fn send_text(&mut self, text: String) {
        if !text.is_empty() || !self.pending_logprobs.is_empty() {
            let logprobs = std::mem::take(&mut self.pending_logprobs);
            let _ = self.events.send(GenerationEvent::Text { text, logprobs });
        }
    }

    fn finish(&self, reason: FinishReason) -> StepOutcome {
        let now = Instant::now();
        let completion = Completion {
            reason,
            prompt_tokens: self.request.prompt.len(),
            completion_tokens: self.generated,
            cached_prompt_tokens: self.cached_prompt_tokens.unwrap_or(0),
            timings: GenerationTimings {
                queued: self.first_scheduled.unwrap_or(now) - self.submitted,
                first_token: self.first_token.unwrap_or(now) - self.submitted,
                total: now - self.submitted,
            },
        };
        let _ = self.events.send(GenerationEvent::Finished(completion));
        StepOutcome::Finished
    }

    pub(super) fn abort(mut self: Box<Self>) {
        let tail = self.stop.finish();
        self.send_text(tail);
        self.finish(FinishReason::Aborted);
    }

    pub(super) fn fail(self: Box<Self>, error: EngineError) {
        let _ = self.events.send(GenerationEvent::Failed(error));
    }
}
