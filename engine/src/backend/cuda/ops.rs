//! Typed launchers for the kernels in `kernels/llama.cu`. Each checks the buffer sizes it
//! can see before launching, so a wrong shape is an error, never a stray GPU write; the
//! contents of block tables and context lengths are the caller's to keep in range.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use half::bf16;

use super::CudaError;

/// Tokens per KV block; the same as the CPU path's `kv_cache::BLOCK_SIZE`.
pub const BLOCK_SIZE: usize = 16;
const MAX_HEAD_DIM: usize = 256;
const ATTENTION_THREADS: u32 = 4 * 32;

/// The compiled kernels, bound to the stream they run on.
pub struct Kernels {
    stream: Arc<CudaStream>,
    embedding_gather: CudaFunction,
    rms_norm: CudaFunction,
    add_rms_norm: CudaFunction,
    add_in_place: CudaFunction,
    silu_mul: CudaFunction,
    rope: CudaFunction,
    kv_cache_write: CudaFunction,
    paged_attention: CudaFunction,
    argmax_f32: CudaFunction,
    sample_rows: CudaFunction,
}

/// Attention heads and the block-table width of a decode batch.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Columns of the `[seqs, max_blocks]` block-table matrix.
    pub max_blocks: usize,
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), CudaError> {
    if ok {
        Ok(())
    } else {
        Err(CudaError::BadShape(what()))
    }
}

fn int(value: usize, what: &str) -> Result<i32, CudaError> {
    i32::try_from(value).map_err(|_| CudaError::BadShape(format!("{what} {value} is too large")))
}

fn grid(blocks: usize, what: &str) -> Result<u32, CudaError> {
    u32::try_from(blocks).map_err(|_| CudaError::BadShape(format!("{what}: {blocks} blocks")))
}

/// Threads for a one-block-per-row kernel: a multiple of 32, at most 1024.
fn row_threads(dim: usize) -> u32 {
    if dim >= 2048 { 1024 } else { 256 }
}

impl Kernels {
    pub(super) fn load(
        module: &Arc<CudaModule>,
        stream: Arc<CudaStream>,
    ) -> Result<Self, CudaError> {
        let f = |name: &str| module.load_function(name);
        Ok(Self {
            stream,
            embedding_gather: f("embedding_gather")?,
            rms_norm: f("rms_norm")?,
            add_rms_norm: f("add_rms_norm")?,
            add_in_place: f("add_in_place")?,
            silu_mul: f("silu_mul")?,
            rope: f("rope")?,
            kv_cache_write: f("kv_cache_write")?,
            paged_attention: f("paged_attention")?,
            argmax_f32: f("argmax_f32")?,
            sample_rows: f("sample_rows")?,
        })
    }

    /// `out[t] = table[ids[t]]`, rows of `dim`. Ids must be below the table's row count.
    pub fn embedding_gather(
        &self,
        table: &CudaSlice<bf16>,
        ids: &CudaSlice<u32>,
        out: &mut CudaSlice<bf16>,
        dim: usize,
    ) -> Result<(), CudaError> {
        let tokens = ids.len();
        check(dim > 0 && table.len().is_multiple_of(dim), || {
            format!("table of {} is not rows of {dim}", table.len())
        })?;
        check(out.len() == tokens * dim, || {
            format!("out has {}, wants {tokens} × {dim}", out.len())
        })?;
        if tokens == 0 {
            return Ok(());
        }
        let dim_arg = int(dim, "dim")?;
        let cfg = LaunchConfig {
            grid_dim: (grid(tokens, "tokens")?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.embedding_gather);
        launch.arg(table).arg(ids).arg(out).arg(&dim_arg);
        // SAFETY: the argument list matches the kernel; sizes are checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// RMS norm of each row of `x` (rows of `dim`) times `weight`, into `out`.
    pub fn rms_norm(
        &self,
        x: &CudaSlice<bf16>,
        weight: &CudaSlice<bf16>,
        out: &mut CudaSlice<bf16>,
        dim: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        check(dim > 0 && x.len().is_multiple_of(dim), || {
            format!("x of {} is not rows of {dim}", x.len())
        })?;
        check(weight.len() == dim && out.len() == x.len(), || {
            "weight or out size".into()
        })?;
        let rows = x.len() / dim;
        if rows == 0 {
            return Ok(());
        }
        let dim_arg = int(dim, "dim")?;
        let cfg = LaunchConfig {
            grid_dim: (grid(rows, "rows")?, 1, 1),
            block_dim: (row_threads(dim), 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.rms_norm);
        launch.arg(x).arg(weight).arg(out).arg(&dim_arg).arg(&eps);
        // SAFETY: the argument list matches the kernel; sizes are checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `residual += x`, then `out = rms_norm(residual) * weight`, row by row.
    pub fn add_rms_norm(
        &self,
        residual: &mut CudaSlice<bf16>,
        x: &CudaSlice<bf16>,
        weight: &CudaSlice<bf16>,
        out: &mut CudaSlice<bf16>,
        dim: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        check(dim > 0 && x.len().is_multiple_of(dim), || {
            format!("x of {} is not rows of {dim}", x.len())
        })?;
        check(
            residual.len() == x.len() && weight.len() == dim && out.len() == x.len(),
            || "residual, weight or out size".into(),
        )?;
        let rows = x.len() / dim;
        if rows == 0 {
            return Ok(());
        }
        let dim_arg = int(dim, "dim")?;
        let cfg = LaunchConfig {
            grid_dim: (grid(rows, "rows")?, 1, 1),
            block_dim: (row_threads(dim), 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.add_rms_norm);
        launch
            .arg(residual)
            .arg(x)
            .arg(weight)
            .arg(out)
            .arg(&dim_arg)
            .arg(&eps);
        // SAFETY: the argument list matches the kernel; sizes are checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `a += b`, element by element.
    pub fn add_in_place(
        &self,
        a: &mut CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
    ) -> Result<(), CudaError> {
        check(a.len() == b.len(), || {
            format!("{} vs {} elements", a.len(), b.len())
        })?;
        let n = a.len();
        if n == 0 {
            return Ok(());
        }
        let n_arg = int(n, "length")?;
        let cfg = LaunchConfig {
            grid_dim: (grid(n.div_ceil(256), "elements")?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.add_in_place);
        launch.arg(a).arg(b).arg(&n_arg);
        // SAFETY: the argument list matches the kernel; sizes are checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[r, j] = silu(gate_up[r, j]) * gate_up[r, inter + j]` over `rows` rows.
    pub fn silu_mul(
        &self,
        gate_up: &CudaSlice<bf16>,
        out: &mut CudaSlice<bf16>,
        rows: usize,
        inter: usize,
    ) -> Result<(), CudaError> {
        check(
            gate_up.len() == rows * 2 * inter && out.len() == rows * inter,
            || {
                format!(
                    "gate_up {} / out {} for {rows} × {inter}",
                    gate_up.len(),
                    out.len()
                )
            },
        )?;
        let n = rows * inter;
        if n == 0 {
            return Ok(());
        }
        let (rows_arg, inter_arg) = (int(rows, "rows")?, int(inter, "inter")?);
        let cfg = LaunchConfig {
            grid_dim: (grid(n.div_ceil(256), "elements")?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.silu_mul);
        launch.arg(gate_up).arg(out).arg(&rows_arg).arg(&inter_arg);
        // SAFETY: the argument list matches the kernel; sizes are checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Rotary embedding in place on `q` [tokens, n_heads, head_dim] and `k` [tokens,
    /// n_kv_heads, head_dim] at `positions`, with `inv_freq` (head_dim / 2 values).
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        q: &mut CudaSlice<bf16>,
        k: &mut CudaSlice<bf16>,
        positions: &CudaSlice<i32>,
        inv_freq: &CudaSlice<f32>,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<(), CudaError> {
        let tokens = positions.len();
        check(head_dim.is_multiple_of(2) && head_dim <= 2048, || {
            format!("head_dim {head_dim}")
        })?;
        check(
            q.len() == tokens * n_heads * head_dim
                && k.len() == tokens * n_kv_heads * head_dim
                && inv_freq.len() == head_dim / 2,
            || "q, k or inv_freq size".into(),
        )?;
        if tokens == 0 {
            return Ok(());
        }
        let (h, kvh, d) = (
            int(n_heads, "heads")?,
            int(n_kv_heads, "kv heads")?,
            int(head_dim, "head_dim")?,
        );
        let cfg = LaunchConfig {
            grid_dim: (
                grid(tokens, "tokens")?,
                grid(n_heads + n_kv_heads, "heads")?,
                1,
            ),
            block_dim: ((head_dim / 2) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.rope);
        launch
            .arg(q)
            .arg(k)
            .arg(positions)
            .arg(inv_freq)
            .arg(&h)
            .arg(&kvh)
            .arg(&d);
        // SAFETY: the argument list matches the kernel; sizes are checked above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Stores keys and values [tokens, n_kv_heads, head_dim] at cache `slots`
    /// (block * BLOCK_SIZE + offset), in the `[block][kv_head][slot][head_dim]` layout.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_cache_write(
        &self,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        k_cache: &mut CudaSlice<bf16>,
        v_cache: &mut CudaSlice<bf16>,
        slots: &CudaSlice<u32>,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<(), CudaError> {
        let tokens = slots.len();
        let per_token = n_kv_heads * head_dim;
        check(k.len() == tokens * per_token && v.len() == k.len(), || {
            "k or v size".into()
        })?;
        check(
            k_cache.len() == v_cache.len() && k_cache.len().is_multiple_of(BLOCK_SIZE * per_token),
            || "cache size".into(),
        )?;
        if tokens == 0 {
            return Ok(());
        }
        let (kvh, d) = (int(n_kv_heads, "kv heads")?, int(head_dim, "head_dim")?);
        let cfg = LaunchConfig {
            grid_dim: (grid(tokens, "tokens")?, grid(n_kv_heads, "kv heads")?, 1),
            block_dim: (head_dim.min(1024) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.kv_cache_write);
        launch
            .arg(k)
            .arg(v)
            .arg(k_cache)
            .arg(v_cache)
            .arg(slots)
            .arg(&kvh)
            .arg(&d);
        // SAFETY: the argument list matches the kernel; sizes are checked above, slots
        // are the caller's blocks.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Attention for a batch of query tokens [n_heads, head_dim] each: query `i` attends
    /// the first `context_lens[i]` cached tokens of block-table row `query_rows[i]`.
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention(
        &self,
        q: &CudaSlice<bf16>,
        k_cache: &CudaSlice<bf16>,
        v_cache: &CudaSlice<bf16>,
        block_tables: &CudaSlice<u32>,
        query_rows: &CudaSlice<u32>,
        context_lens: &CudaSlice<i32>,
        out: &mut CudaSlice<bf16>,
        shape: AttentionShape,
        scale: f32,
    ) -> Result<(), CudaError> {
        let seqs = context_lens.len();
        check(query_rows.len() == seqs, || {
            "one block-table row per query".into()
        })?;
        let AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
            max_blocks,
        } = shape;
        check(head_dim % 32 == 0 && head_dim <= MAX_HEAD_DIM, || {
            format!("head_dim {head_dim} must be a multiple of 32 up to {MAX_HEAD_DIM}")
        })?;
        check(n_kv_heads > 0 && n_heads % n_kv_heads == 0, || {
            format!("{n_heads} heads over {n_kv_heads} kv heads")
        })?;
        check(
            q.len() == seqs * n_heads * head_dim && out.len() == q.len(),
            || "q or out size".into(),
        )?;
        check(
            max_blocks > 0 && block_tables.len().is_multiple_of(max_blocks),
            || "block table size".into(),
        )?;
        check(k_cache.len() == v_cache.len(), || "cache size".into())?;
        if seqs == 0 {
            return Ok(());
        }
        let (h, kvh, d, mb) = (
            int(n_heads, "heads")?,
            int(n_kv_heads, "kv heads")?,
            int(head_dim, "head_dim")?,
            int(max_blocks, "max_blocks")?,
        );
        let cfg = LaunchConfig {
            grid_dim: (grid(n_heads, "heads")?, grid(seqs, "sequences")?, 1),
            block_dim: (ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.paged_attention);
        launch
            .arg(q)
            .arg(k_cache)
            .arg(v_cache)
            .arg(block_tables)
            .arg(query_rows)
            .arg(context_lens)
            .arg(out)
            .arg(&h)
            .arg(&kvh)
            .arg(&d)
            .arg(&mb)
            .arg(&scale);
        // SAFETY: the argument list matches the kernel; sizes are checked above; block
        // tables and context lengths are the caller's to keep within the cache.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[r] = argmax(logits[r, :])`, the lowest index on ties.
    pub fn argmax(
        &self,
        logits: &CudaSlice<f32>,
        out: &mut CudaSlice<u32>,
        vocab: usize,
    ) -> Result<(), CudaError> {
        let Some((cfg, vocab_arg)) = per_logit_row(logits, out, vocab)? else {
            return Ok(());
        };
        let mut launch = self.stream.launch_builder(&self.argmax_f32);
        launch.arg(logits).arg(out).arg(&vocab_arg);
        // SAFETY: the argument list matches the kernel; sizes are checked.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[r]` = a token sampled from `logits[r, :]` with row `r`'s parameters, packed by
    /// `sampling::pack`.
    pub fn sample(
        &self,
        logits: &CudaSlice<f32>,
        params: &CudaSlice<u32>,
        out: &mut CudaSlice<u32>,
        vocab: usize,
    ) -> Result<(), CudaError> {
        check(
            params.len() == out.len() * super::sampling::WORDS_PER_ROW,
            || format!("{} parameter words for {} rows", params.len(), out.len()),
        )?;
        let Some((cfg, vocab_arg)) = per_logit_row(logits, out, vocab)? else {
            return Ok(());
        };
        let mut launch = self.stream.launch_builder(&self.sample_rows);
        launch.arg(logits).arg(params).arg(out).arg(&vocab_arg);
        // SAFETY: the argument list matches the kernel; sizes are checked.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}

/// The launch of a kernel that picks one token per row of `[out.len(), vocab]` logits (one
/// 1024-thread block per row), after checking the sizes; `None` when there are no rows.
fn per_logit_row(
    logits: &CudaSlice<f32>,
    out: &CudaSlice<u32>,
    vocab: usize,
) -> Result<Option<(LaunchConfig, i32)>, CudaError> {
    check(vocab > 0 && logits.len() == out.len() * vocab, || {
        format!("logits {} for {} rows of {vocab}", logits.len(), out.len())
    })?;
    if out.is_empty() {
        return Ok(None);
    }
    let cfg = LaunchConfig {
        grid_dim: (grid(out.len(), "rows")?, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok(Some((cfg, int(vocab, "vocab")?)))
}
