//! Quantized matrix multiplication `dst[m, n] = lhs[m, k] · weights[n, k]ᵀ` for GGUF's
//! Q4_1, Q5_0 and Q8_0 weights, read in place from the file mapping. Activations are quantized to
//! 8 bits per 32-element block (as llama.cpp does), then each weight row is dotted with
//! every activation row while it is in cache: a batch of m tokens reads the weights once.
//! Work is split over weight rows on the rayon pool. Products that share an input (a
//! layer's Q, K and V; its gate and up projections) quantize it once and share one pass.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx2;
mod kernels;
mod quantize;
mod silu;
#[cfg(test)]
mod tests;

use kernels::Kernels;
use quantize::{Group4Block, Group8Block, QuantizedRow};

/// Elements per quantization block, for both formats.
pub const BLOCK: usize = 32;
/// Q4_1: f16 scale, f16 min, 16 bytes of nibbles.
pub const Q4_1_BYTES: usize = 20;
/// Q5_0: f16 scale, 32 high bits, 16 bytes of low nibbles; values are 5 bits minus 16.
/// (Llama-family GGUFs whose hidden size is not a multiple of 256, such as Qwen2.5-0.5B,
/// carry most of their weights in it: K-quants need rows of whole 256-value blocks.)
pub const Q5_0_BYTES: usize = 22;
/// Q8_0: f16 scale, 32 signed bytes.
pub const Q8_0_BYTES: usize = 34;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Q4_1,
    Q5_0,
    Q8_0,
}

impl WeightFormat {
    fn row_bytes(self, k: usize) -> usize {
        k / BLOCK * self.block_bytes()
    }

    fn block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_1 => Q4_1_BYTES,
            WeightFormat::Q5_0 => Q5_0_BYTES,
            WeightFormat::Q8_0 => Q8_0_BYTES,
        }
    }
}

/// A weight matrix in one of our formats: `rows` rows of `k / 32` blocks each.
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    pub format: WeightFormat,
    pub bytes: &'a [u8],
    pub rows: usize,
}

/// Multiplies; `weights` holds `n` rows of `k / 32` blocks in `format`.
pub fn matmul(
    format: WeightFormat,
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    weights: &[u8],
    dst: &mut [f32],
) -> Result<(), String> {
    let weights = Weights {
        format,
        bytes: weights,
        rows: n,
    };
    matmul_shared(m, k, lhs, &mut [(weights, dst)])
}

/// Several products of one input `lhs[m, k]`: each `(weights, dst)` gets
/// `dst[m, weights.rows] = lhs · weightsᵀ`. The input is quantized once and every matrix's
/// rows are split over the pool in one pass.
pub fn matmul_shared(
    m: usize,
    k: usize,
    lhs: &[f32],
    products: &mut [(Weights<'_>, &mut [f32])],
) -> Result<(), String> {
    for (weights, dst) in products.iter() {
        check_sizes(m, k, lhs, weights, dst)?;
    }
    if m == 0 || k == 0 {
        for (weights, dst) in products.iter_mut() {
            dst[..m * weights.rows].fill(0.0);
        }
        return Ok(());
    }
    let input = Activations::new(lhs, m, k);
    let mut tasks = Vec::new();
    for (weights, dst) in products.iter_mut() {
        tasks.extend(Task::split(*weights, k, m, dst));
    }
    tasks.into_par_iter().for_each(|mut task| {
        if let Some(row) = input.single() {
            // One token: straight into its output row.
            let rows = task.rows();
            for (out, w) in task.outputs[0].iter_mut().zip(rows) {
                *out = (task.kernels.dot)(w, row);
            }
            return;
        }
        let mut tile = Tile::new(m);
        let columns = task.columns();
        for (j, w) in task.rows().enumerate() {
            input.dot_row(&task.kernels, w, &mut tile.column);
            tile.push(j);
            if let Some(first) = tile.complete(j, columns) {
                for (out, values) in task.outputs.iter_mut().zip(tile.rows()) {
                    copy_run(&mut out[first..], values);
                }
            }
        }
    });
    Ok(())
}

/// A feed-forward block's gated activation: `dst[m, n] = silu(lhs · gateᵀ) * (lhs · upᵀ)`,
/// with one quantization of `lhs` and one pass over both matrices.
pub fn matmul_swiglu(
    m: usize,
    k: usize,
    lhs: &[f32],
    gate: Weights<'_>,
    up: Weights<'_>,
    dst: &mut [f32],
) -> Result<(), String> {
    check_sizes(m, k, lhs, &gate, dst)?;
    check_sizes(m, k, lhs, &up, dst)?;
    if gate.rows != up.rows {
        return Err(format!("gate has {} rows, up {}", gate.rows, up.rows));
    }
    if m == 0 || k == 0 {
        dst[..m * gate.rows].fill(0.0);
        return Ok(());
    }
    let input = Activations::new(lhs, m, k);
    let up_kernels = Kernels::new(up.format);
    let up_row_bytes = up.format.row_bytes(k);
    Task::split(gate, k, m, dst)
        .into_par_iter()
        .for_each(|mut task| {
            let (mut gated, mut linear) = (Tile::new(m), Tile::new(m));
            let up_rows = up.bytes[task.first_row * up_row_bytes..].chunks_exact(up_row_bytes);
            let columns = task.columns();
            for (j, (g, u)) in task.rows().zip(up_rows).enumerate() {
                input.dot_row(&task.kernels, g, &mut gated.column);
                input.dot_row(&up_kernels, u, &mut linear.column);
                gated.push(j);
                linear.push(j);
                if let Some(first) = gated.complete(j, columns) {
                    let runs = gated.rows().zip(linear.rows());
                    for (out, (g, u)) in task.outputs.iter_mut().zip(runs) {
                        silu::gated(g, u, &mut out[first..first + g.len()]);
                    }
                }
            }
        });
    Ok(())
}

fn check_sizes(
    m: usize,
    k: usize,
    lhs: &[f32],
    weights: &Weights<'_>,
    dst: &[f32],
) -> Result<(), String> {
    if !k.is_multiple_of(BLOCK) {
        return Err(format!("k = {k} is not a multiple of {BLOCK}"));
    }
    let n = weights.rows;
    if lhs.len() != m * k
        || weights.bytes.len() < n * weights.format.row_bytes(k)
        || dst.len() < m * n
    {
        return Err(format!(
            "bad sizes for ({m}, {k}, {n}): lhs {}, weights {}, dst {}",
            lhs.len(),
            weights.bytes.len(),
            dst.len()
        ));
    }
    Ok(())
}

/// An input quantized once, in the layouts its token count calls for, so that each weight
/// block is unpacked once for several tokens: groups of eight (one token per 32-bit lane)
/// while five or more tokens remain, the last padded with zero rows; then two to four
/// tokens as a group of four (one per 64-bit lane, about half a group of eight's work), or
/// a lone last token as one row. All kernels sum in one order: the layout does not change
/// results.
struct Activations {
    eights: Vec<Vec<Group8Block>>,
    four: Option<Vec<Group4Block>>,
    last: Option<QuantizedRow>,
}

impl Activations {
    fn new(lhs: &[f32], m: usize, k: usize) -> Self {
        let in_eights = if m % 8 > 4 { m } else { m - m % 8 };
        let rest = &lhs[in_eights * k..m * k];
        Self {
            eights: lhs[..in_eights * k]
                .par_chunks(8 * k)
                .map(|eight| quantize::quantize_group(eight, k))
                .collect(),
            four: (rest.len() > k).then(|| quantize::quantize_group(rest, k)),
            last: (rest.len() == k).then(|| quantize::quantize_row(rest)),
        }
    }

    /// The input's only token, if it has one token.
    fn single(&self) -> Option<&QuantizedRow> {
        self.last
            .as_ref()
            .filter(|_| self.eights.is_empty() && self.four.is_none())
    }

    /// One weight row dotted with every token: `out[t]` for token `t`.
    #[inline(always)]
    fn dot_row(&self, kernels: &Kernels, w: &[u8], out: &mut [f32]) {
        let in_eights = (8 * self.eights.len()).min(out.len());
        let (eights, rest) = out.split_at_mut(in_eights);
        // Whole groups' outputs, then the padded last group's (shorter than eight).
        let (whole, padded) = eights.as_chunks_mut::<8>();
        // Two whole groups at a time (each block unpacked once for both), then one at a
        // time.
        let pairs = kernels.dot8_pair.map_or(0, |_| whole.len() / 2);
        let (paired, singles) = self.eights.split_at(2 * pairs);
        let (paired_out, singles_out) = whole.split_at_mut(2 * pairs);
        if let Some(dot8_pair) = kernels.dot8_pair {
            for (groups, outs) in paired.chunks_exact(2).zip(paired_out.chunks_exact_mut(2)) {
                if let ([first, second], [first_out, second_out]) = (groups, outs) {
                    dot8_pair(w, [first, second], [first_out, second_out]);
                }
            }
        }
        let mut singles = singles.iter();
        // Outputs first: `zip` takes from its left side first, and the padded group must stay.
        for (out, group) in singles_out.iter_mut().zip(singles.by_ref()) {
            (kernels.dot8)(w, group, out);
        }
        if let Some(group) = singles.next().filter(|_| !padded.is_empty()) {
            let mut eight = [0f32; 8];
            (kernels.dot8)(w, group, &mut eight);
            padded.copy_from_slice(&eight[..padded.len()]);
        }
        if let Some(group) = &self.four {
            let mut four = [0f32; 4];
            (kernels.dot4)(w, group, &mut four);
            let n = rest.len().min(4);
            rest[..n].copy_from_slice(&four[..n]);
        }
        if let Some(row) = &self.last {
            rest[0] = (kernels.dot)(w, row);
        }
    }
}

/// Output columns per tile.
const TILE: usize = 8;

/// Up to `TILE` consecutive output columns of every token: the kernels give one weight row
/// (one column) for all tokens at a time, the outputs want each token's columns side by
/// side. Columns gather here and leave one contiguous run per token.
struct Tile {
    /// The current column, one value per token, for the kernels to fill.
    column: Vec<f32>,
    /// Per token, the tile's columns so far.
    values: Vec<[f32; TILE]>,
    filled: usize,
}

impl Tile {
    fn new(tokens: usize) -> Self {
        Self {
            column: vec![0f32; tokens],
            values: vec![[0f32; TILE]; tokens],
            filled: 0,
        }
    }

    /// Takes `column` as output column `j`.
    fn push(&mut self, j: usize) {
        let slot = j % TILE;
        for (values, v) in self.values.iter_mut().zip(&self.column) {
            values[slot] = *v;
        }
        self.filled = slot + 1;
    }

    /// The tile's first column once column `j` (of `columns`) completes it: the tile is
    /// full or `j` is the last.
    fn complete(&self, j: usize, columns: usize) -> Option<usize> {
        (self.filled == TILE || j + 1 == columns).then(|| j + 1 - self.filled)
    }

    /// Each token's values in the tile.
    fn rows(&self) -> impl Iterator<Item = &[f32]> {
        let filled = self.filled;
        self.values.iter().map(move |v| &v[..filled])
    }
}

/// `values` to the start of `out`: a whole tile in one fixed-size move (a slice copy of
/// run-time length is a call to `memmove`).
#[inline(always)]
fn copy_run(out: &mut [f32], values: &[f32]) {
    match (
        <&mut [f32; TILE]>::try_from(&mut out[..values.len()]),
        <&[f32; TILE]>::try_from(values),
    ) {
        (Ok(out), Ok(values)) => *out = *values,
        _ => out[..values.len()].copy_from_slice(values),
    }
}

/// A range of one matrix's rows, with its piece of every output row: enough work to
/// amortise scheduling, few enough tasks to balance.
struct Task<'a, 'd> {
    weights: &'a [u8],
    row_bytes: usize,
    first_row: usize,
    kernels: Kernels,
    outputs: Vec<&'d mut [f32]>,
}

impl<'a, 'd> Task<'a, 'd> {
    fn split(weights: Weights<'a>, k: usize, m: usize, dst: &'d mut [f32]) -> Vec<Self> {
        let n = weights.rows;
        if n == 0 {
            return Vec::new();
        }
        // Two tasks per thread and matrix: finer splits cost more in scheduling than they
        // win in balance (`step_bench`: 8 per thread was 6% slower for one token, 3% for
        // eight).
        let chunk = (n / (rayon::current_num_threads() * 2)).clamp(16, 4096);
        let row_bytes = weights.format.row_bytes(k);
        let kernels = Kernels::new(weights.format);
        let mut tasks: Vec<Self> = Vec::new();
        for row in dst[..m * n].chunks_exact_mut(n) {
            for (c, piece) in row.chunks_mut(chunk).enumerate() {
                if c == tasks.len() {
                    tasks.push(Task {
                        weights: &weights.bytes[c * chunk * row_bytes..],
                        row_bytes,
                        first_row: c * chunk,
                        kernels,
                        outputs: Vec::with_capacity(m),
                    });
                }
                tasks[c].outputs.push(piece);
            }
        }
        tasks
    }

    /// This task's weight rows.
    fn rows(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.weights
            .chunks_exact(self.row_bytes)
            .take(self.columns())
    }

    /// How many weight rows (output columns) this task has.
    fn columns(&self) -> usize {
        self.outputs.first().map_or(0, |r| r.len())
    }
}
