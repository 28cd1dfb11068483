//! Continuous batching. One engine thread owns the model and every sequence's KV cache.
//! Each step it admits waiting requests, runs one forward pass over all running sequences
//! (prefill chunks and decode tokens together), samples, and streams text back. Requests
//! join and leave between steps; a client that drops its stream cancels its sequence.

mod blocks;
mod sequence;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::backend::{ModelRunner, Output, Want};
use crate::error::{EngineError, Result};
use crate::model::kv_cache::{BLOCK_SIZE, blocks_for};
use crate::model::llama::Segment;
use crate::sampling::{SamplingParams, TokenLogprob};
use crate::tokenizer::TextTokenizer;
use blocks::BlockAllocator;
use sequence::{Sequence, StepOutcome};

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Sequences decoded together in one step.
    pub max_running: usize,
    /// Requests that may wait for a slot before new ones are turned away.
    pub max_waiting: usize,
    /// Tokens in one forward pass; long prompts are prefilled in chunks of this size.
    pub max_batched_tokens: usize,
    /// Threads of this model's compute pool (the engine loop runs on one of them).
    pub threads: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            max_running: 32,
            max_waiting: 256,
            max_batched_tokens: 128,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// What to generate. The prompt is already tokenized and checked against the context.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Keep going past end-of-turn tokens (benchmarks).
    pub ignore_eos: bool,
    /// Choices of one request (`n > 1`) share a group: the first computes the prompt and
    /// the others start once its whole units (blocks or chunks) are in the prefix cache.
    pub group: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of turn, or a stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The server is shutting down and cut the sequence short.
    Aborted,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationTimings {
    /// From submission to the first forward pass that included the sequence.
    pub queued: Duration,
    /// From submission to the first generated token.
    pub first_token: Duration,
    /// From submission to the end.
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens found in the prefix cache when the sequence was first admitted.
    pub cached_prompt_tokens: usize,
    pub timings: GenerationTimings,
}

#[derive(Debug)]
pub enum GenerationEvent {
    /// Newly generated text, with the log-probabilities of the tokens sampled since the last
    /// event when the request asked for them. Never both empty.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Finished(Completion),
    Failed(EngineError),
}

/// The receiving end of a generation. Dropping it cancels the sequence.
pub type GenerationStream = mpsc::UnboundedReceiver<GenerationEvent>;

enum Command {
    Submit(Box<Sequence>),
    /// Finish every sequence still running after `deadline`, then stop.
    Shutdown {
        deadline: Instant,
    },
}

#[derive(Debug, Default)]
struct Counters {
    running: AtomicUsize,
    /// Sequences in the engine loop's queue, as it last published.
    waiting: AtomicUsize,
    /// Sequences submitted that the engine loop has not taken from its inbox yet: its
    /// publications cannot count them, so `submit` and the loop keep them here.
    submitted: AtomicUsize,
    used_blocks: AtomicUsize,
    preemptions: AtomicUsize,
    prefix_queries: AtomicUsize,
    prefix_hits: AtomicUsize,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SchedulerStats {
    pub running: usize,
    pub waiting: usize,
    /// KV blocks held by sequences, of `total_blocks`.
    pub used_blocks: usize,
    pub total_blocks: usize,
    /// Sequences preempted (freed, to be recomputed) since start.
    pub preemptions: usize,
    /// Prompt tokens looked up in the prefix cache, and those found, since start.
    pub prefix_cache_queries: usize,
    pub prefix_cache_hits: usize,
}

/// The KV cache's size, for the start-up log.
#[derive(Debug, Clone, Copy)]
pub struct KvCapacity {
    pub blocks: usize,
    pub tokens: usize,
    pub bytes_per_token: usize,
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct Scheduler {
    commands: std_mpsc::Sender<Command>,
    counters: Arc<Counters>,
    options: SchedulerOptions,
    capacity: KvCapacity,
    /// Signalled (by disconnecting) when the engine loop has returned.
    stopped: Arc<parking_lot::Mutex<Option<std_mpsc::Receiver<()>>>>,
    _pool: Arc<rayon::ThreadPool>,
}

impl Scheduler {
    /// Starts the engine loop over `runner`, whose KV cache it hands out block by block.
    pub fn start(
        runner: Box<dyn ModelRunner>,
        tokenizer: Arc<TextTokenizer>,
        options: SchedulerOptions,
    ) -> Result<Self> {
        if options.max_batched_tokens == 0 || !options.max_batched_tokens.is_multiple_of(BLOCK_SIZE)
        {
            return Err(EngineError::InvalidParameter {
                param: "max_batched_tokens",
                message: format!(
                    "{} is not a positive multiple of the KV block size, {BLOCK_SIZE}",
                    options.max_batched_tokens
                ),
            });
        }
        let (commands, inbox) = std_mpsc::channel();
        let counters = Arc::new(Counters::default());
        let n_blocks = runner.kv_blocks();
        let capacity = KvCapacity {
            blocks: n_blocks,
            tokens: n_blocks * BLOCK_SIZE,
            bytes_per_token: runner.kv_bytes_per_token(),
        };
        // The prefix cache's unit: any whole block where rows are independent, else whole
        // chunks (see `ModelRunner::rows_independent`).
        let prefix_unit = if runner.rows_independent() {
            BLOCK_SIZE
        } else {
            options.max_batched_tokens
        };
        let worker = Worker {
            prefix_unit,
            runner,
            tokenizer,
            options: options.clone(),
            counters: counters.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            shutdown_deadline: None,
            blocks: BlockAllocator::new(n_blocks),
        };
        let (stopped_tx, stopped) = std_mpsc::channel::<()>();
        // The loop runs on a worker of the model's own compute pool, so the thread that
        // drives each step also takes part in its parallel kernels instead of waiting beside
        // them (with one more thread than cores, idle workers yielding stole time from the
        // serial parts). The pool is the model's alone: the loop blocks one worker while
        // idle, which must never starve anyone else's parallel work.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.threads.max(1))
            .thread_name(|i| format!("engine-{i}"))
            .build()
            .map_err(|e| EngineError::InvalidParameter {
                param: "threads",
                message: e.to_string(),
            })?;
        pool.spawn(move || {
            worker.run(inbox);
            drop(stopped_tx);
        });
        Ok(Self {
            commands,
            counters,
            options,
            capacity,
            stopped: Arc::new(parking_lot::Mutex::new(Some(stopped))),
            _pool: Arc::new(pool),
        })
    }

    pub fn submit(&self, request: GenerationRequest) -> Result<GenerationStream> {
        // A request that could never fit would wait forever: refuse it now.
        let needed = request.prompt.len().saturating_add(request.max_new_tokens);
        if needed > self.capacity.tokens {
            return Err(EngineError::KvCapacityExceeded {
                requested: needed,
                capacity: self.capacity.tokens,
            });
        }
        let in_inbox = self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        if in_inbox + self.counters.waiting.load(Ordering::Relaxed) >= self.options.max_waiting {
            self.counters.submitted.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::QueueFull {
                limit: self.options.max_waiting,
            });
        }
        let (events, stream) = mpsc::unbounded_channel();
        let sequence = Box::new(Sequence::new(request, events));
        if self.commands.send(Command::Submit(sequence)).is_err() {
            self.counters.submitted.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Stopped);
        }
        Ok(stream)
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            running: self.counters.running.load(Ordering::Relaxed),
            waiting: self.counters.waiting.load(Ordering::Relaxed)
                + self.counters.submitted.load(Ordering::Relaxed),
            used_blocks: self.counters.used_blocks.load(Ordering::Relaxed),
            total_blocks: self.capacity.blocks,
            preemptions: self.counters.preemptions.load(Ordering::Relaxed),
            prefix_cache_queries: self.counters.prefix_queries.load(Ordering::Relaxed),
            prefix_cache_hits: self.counters.prefix_hits.load(Ordering::Relaxed),
        }
    }

    pub fn kv_capacity(&self) -> KvCapacity {
        self.capacity
    }

    /// Lets running sequences finish until `grace` has passed, aborts the rest, and waits
    /// for the engine loop to return.
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.commands.send(Command::Shutdown {
            deadline: Instant::now() + grace,
        });
        if let Some(stopped) = self.stopped.lock().take() {
            // Returns once the loop drops its sender.
            let _ = stopped.recv();
        }
    }
}

struct Worker {
    /// Tokens per unit of prompt the prefix cache shares: a block, or a whole chunk.
    prefix_unit: usize,
    runner: Box<dyn ModelRunner>,
    tokenizer: Arc<TextTokenizer>,
    options: SchedulerOptions,
    counters: Arc<Counters>,
    waiting: VecDeque<Box<Sequence>>,
    // Boxed: sequences move between the queue and the batch, and are large.
    #[allow(clippy::vec_box)]
    running: Vec<Box<Sequence>>,
    shutdown_deadline: Option<Instant>,
    blocks: BlockAllocator,
}

impl Worker {
    fn run(mut self, inbox: std_mpsc::Receiver<Command>) {
        loop {
            let idle = self.running.is_empty() && self.waiting.is_empty();
            if idle && self.shutdown_deadline.is_some() {
                return;
            }
            if idle {
                match inbox.recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => return,
                }
            }
            while let Ok(command) = inbox.try_recv() {
                self.handle(command);
            }
            if let Some(deadline) = self.shutdown_deadline
                && Instant::now() >= deadline
            {
                self.abort_all();
                return;
            }
            self.step();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(sequence) => {
                // From the inbox's count to the queue's: the sum never dips.
                self.counters.waiting.fetch_add(1, Ordering::Relaxed);
                self.counters.submitted.fetch_sub(1, Ordering::Relaxed);
                if self.shutdown_deadline.is_some() {
                    sequence.fail(EngineError::Stopped);
                } else {
                    self.waiting.push_back(sequence);
                }
            }
            Command::Shutdown { deadline } => self.shutdown_deadline = Some(deadline),
        }
    }

    fn step(&mut self) {
        self.drop_cancelled();
        self.admit();
        self.publish_counts();
        if self.running.is_empty() {
            return;
        }

        let _span = tracing::trace_span!("engine_step", running = self.running.len()).entered();
        let plans = self.plan();
        self.publish_counts();
        if plans.is_empty() {
            return;
        }

        let device_sampling = self.runner.samples_on_device();
        let wants: Vec<Want> = plans
            .iter()
            .map(|&(i, count)| {
                let seq = &self.running[i];
                if seq.prefill_remaining() != count {
                    Want::Nothing
                } else if let Some(on_device) = seq.device_sampling().filter(|_| device_sampling) {
                    Want::Token(on_device)
                } else {
                    Want::Logits
                }
            })
            .collect();
        let now = Instant::now();
        let runner = &mut self.runner;
        let result = {
            let mut segments: Vec<Segment<'_>> = Vec::with_capacity(plans.len());
            let mut plan_iter = plans.iter().peekable();
            for (i, seq) in self.running.iter_mut().enumerate() {
                if let Some(&&(idx, count)) = plan_iter.peek()
                    && idx == i
                {
                    plan_iter.next();
                    seq.mark_scheduled(now);
                    segments.push(seq.segment(count));
                }
            }
            runner.forward(&mut segments, &wants)
        };
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(error) => {
                tracing::error!(error = %error, "forward pass failed; failing the batch");
                let message = error.to_string();
                // Descending indices with `remove` keep the batch in admission order.
                for (i, _) in plans.iter().rev() {
                    let mut seq = self.running.remove(*i);
                    self.blocks.release(seq.release_blocks());
                    seq.fail(EngineError::ForwardFailed(message.clone()));
                }
                self.publish_counts();
                return;
            }
        };

        for &(i, _) in &plans {
            self.register_computed_prefix(i);
        }
        let mut finished = Vec::new();
        for ((i, _), output) in plans.iter().zip(outputs) {
            let seq = &mut self.running[*i];
            let outcome = match output {
                Output::Nothing => continue,
                Output::Logits(mut row) => seq.accept_logits(&mut row, &self.tokenizer),
                Output::Token(token) => seq.accept_token(token, &self.tokenizer),
            };
            if let StepOutcome::Finished = outcome {
                finished.push(*i);
            }
        }
        // `remove`, not `swap_remove`: the batch stays oldest first, so preemption can take
        // the youngest from the end.
        for i in finished.into_iter().rev() {
            let mut seq = self.running.remove(i);
            self.blocks.release(seq.release_blocks());
        }
        self.publish_counts();
    }

    fn drop_cancelled(&mut self) {
        self.waiting.retain(|s| !s.is_cancelled());
        let blocks = &mut self.blocks;
        self.running.retain_mut(|s| {
            if s.is_cancelled() {
                blocks.release(s.release_blocks());
                false
            } else {
                true
            }
        });
    }

    /// Moves waiting sequences into the batch while there is room, oldest (and preempted)
    /// first. A sequence needs free blocks for its first prefill chunk to be admitted.
    /// Sibling choices of a request wait for the first one's prompt, then reuse it.
    fn admit(&mut self) {
        let mut index = 0;
        while self.running.len() < self.options.max_running && index < self.waiting.len() {
            let next = &self.waiting[index];
            // A sibling choice waits while another computes their shared prompt.
            let sibling_prefilling = next.group().is_some_and(|group| {
                self.running
                    .iter()
                    .any(|r| r.group() == Some(group) && r.is_prefilling_prompt())
            });
            if sibling_prefilling {
                index += 1;
                continue;
            }
            let first_chunk = next
                .prefill_remaining()
                .min(self.options.max_batched_tokens);
            if blocks_for(first_chunk) > self.blocks.available() {
                break;
            }
            if let Some(mut sequence) = self.waiting.remove(index) {
                self.reuse_cached_prefix(&mut sequence);
                self.running.push(sequence);
            }
        }
    }

    /// Starts a sequence with an empty cache on the longest run of whole prompt units
    /// (`prefix_unit`: blocks, or chunks where rows are not independent) that is cached
    /// already. At least one prompt token is always computed (its logits pick the first new
    /// token), and the output is the same as uncached.
    fn reuse_cached_prefix(&mut self, sequence: &mut Sequence) {
        if sequence.cached() > 0 {
            return;
        }
        let prompt_len = sequence.prompt_len();
        let hashes = sequence.prompt_block_hashes();
        let blocks_per_unit = self.prefix_unit / BLOCK_SIZE;
        let mut reused: Vec<u32> = Vec::new();
        'units: for unit_hashes in hashes.chunks_exact(blocks_per_unit) {
            if (reused.len() + blocks_per_unit) * BLOCK_SIZE >= prompt_len {
                break;
            }
            let mut taken = Vec::with_capacity(blocks_per_unit);
            for &hash in unit_hashes {
                match self.blocks.reuse(hash) {
                    Some(block) => taken.push(block),
                    None => {
                        self.blocks.release(taken);
                        break 'units;
                    }
                }
            }
            reused.extend(taken);
        }
        let hit_tokens = reused.len() * BLOCK_SIZE;
        self.counters
            .prefix_queries
            .fetch_add(prompt_len, Ordering::Relaxed);
        self.counters
            .prefix_hits
            .fetch_add(hit_tokens, Ordering::Relaxed);
        sequence.note_prefix_hit(hit_tokens);
        if hit_tokens > 0 {
            sequence.start_from_cached_prefix(reused, hit_tokens);
        }
    }

    /// Makes the prompt units a sequence has finished computing reusable by others.
    fn register_computed_prefix(&mut self, i: usize) {
        let unit = self.prefix_unit;
        let seq = &mut self.running[i];
        for (block, hash) in seq.newly_complete_prompt_blocks(unit) {
            self.blocks.register(block, hash);
        }
    }

    /// Chooses this step's segments and gives them blocks. Decode tokens come first, then
    /// prefill chunks with what is left of the token budget. Chunks always end at multiples
    /// of `max_batched_tokens` in the sequence, whatever else shares the step: attention's
    /// matrix shapes, and so its rounding, then depend on the prompt alone, and batched
    /// output equals unbatched output exactly. One chunk is always taken when blocks allow,
    /// so prefill cannot starve behind many decodes. When a decoding sequence needs a block
    /// and none is free, the youngest sequence is preempted: its blocks are freed and it
    /// waits at the front of the queue to be recomputed.
    fn plan(&mut self) -> Vec<(usize, usize)> {
        let chunk = self.options.max_batched_tokens;
        let mut budget = chunk;
        let mut plans: Vec<(usize, usize)> = Vec::new(); // (running index, token count)
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].is_decoding() {
                i += 1;
            } else if self.reserve_or_preempt(i) {
                plans.push((i, 1));
                budget = budget.saturating_sub(1);
                i += 1;
            }
            // Otherwise sequence i was the youngest and preempted itself.
        }
        let mut prefill_taken = false;
        for (i, seq) in self.running.iter_mut().enumerate() {
            if seq.is_decoding() {
                continue;
            }
            let take = seq.next_prefill_len(chunk);
            if take > budget && prefill_taken {
                continue;
            }
            let Some(blocks) = self.blocks.allocate(seq.blocks_missing(take)) else {
                continue;
            };
            seq.add_blocks(blocks);
            plans.push((i, take));
            budget = budget.saturating_sub(take);
            prefill_taken = true;
        }
        plans.sort_unstable();
        plans
    }

    /// Gives running sequence `i` room for one more token, preempting the youngest
    /// sequences if needed. False if `i` itself had to be preempted.
    fn reserve_or_preempt(&mut self, i: usize) -> bool {
        loop {
            if let Some(blocks) = self.blocks.allocate(self.running[i].blocks_missing(1)) {
                self.running[i].add_blocks(blocks);
                return true;
            }
            let youngest = self.running.len() - 1;
            if let Some(mut victim) = self.running.pop() {
                self.blocks.release(victim.release_blocks());
                self.counters.preemptions.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("KV cache full: preempted a sequence to recompute later");
                self.waiting.push_front(victim);
            }
            if youngest == i {
                return false;
            }
        }
    }

    fn abort_all(&mut self) {
        for mut seq in self.running.drain(..) {
            self.blocks.release(seq.release_blocks());
            seq.abort();
        }
        for seq in self.waiting.drain(..) {
            seq.fail(EngineError::Stopped);
        }
        self.publish_counts();
    }

    /// Publishes exact counts (sequences still in the inbox are counted in `submitted`).
    fn publish_counts(&self) {
        self.counters
            .running
            .store(self.running.len(), Ordering::Relaxed);
        self.counters
            .waiting
            .store(self.waiting.len(), Ordering::Relaxed);
        self.counters
            .used_blocks
            .store(self.blocks.in_use(), Ordering::Relaxed);
    }
}
