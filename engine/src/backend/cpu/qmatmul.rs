//! Quantized matrix multiplication `dst[m, n] = lhs[m, k] · weights[n, k]ᵀ` for GGUF's
//! Q4_1, Q5_0 and Q8_0 weights, read in place from the file mapping. Activations are quantized to
//! 8 bits per 32-element block (as llama.cpp does), then each weight row is dotted with
//! every activation row while it is in cache: a batch of m tokens reads the weights once.
//! Work is split over weight rows on the rayon pool.

use rayon::prelude::*;

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
    fn block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_1 => Q4_1_BYTES,
            WeightFormat::Q5_0 => Q5_0_BYTES,
            WeightFormat::Q8_0 => Q8_0_BYTES,
        }
    }
}

/// One activation row quantized to 8 bits: per block a scale, the scaled sum of its
/// values (for Q4_1's min term) and 32 signed values.
struct QuantizedRow {
    scales: Vec<f32>,
    sums: Vec<f32>,
    values: Vec<i8>,
}

/// Four quantized activation rows interleaved block by block, so that the four-row kernels
/// walk one array: per block, the rows' scales, their sums, then their 32 values each.
/// Rows past the end of the batch are zero and their results are dropped.
#[derive(Clone, Copy)]
#[repr(C)]
struct GroupBlock {
    scales: [f32; 4],
    sums: [f32; 4],
    values: [[i8; BLOCK]; 4],
}

const EMPTY_GROUP_BLOCK: GroupBlock = GroupBlock {
    scales: [0.0; 4],
    sums: [0.0; 4],
    values: [[0; BLOCK]; 4],
};

/// Eight quantized activation rows laid out for the eight-row kernels, which keep one
/// token per vector lane: per block the rows' scales and sums, then the block's values in
/// eight slices of four, each slice holding those four values of all eight rows side by
/// side (`slices[s][4 * r + i]` is value `4 * s + i` of row `r`).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Group8Block {
    scales: [f32; 8],
    sums: [f32; 8],
    slices: [[i8; BLOCK]; 8],
}

const EMPTY_GROUP8_BLOCK: Group8Block = Group8Block {
    scales: [0.0; 8],
    sums: [0.0; 8],
    slices: [[0; BLOCK]; 8],
};

/// Quantizes up to eight rows (`k` values each) straight into one eight-row group.
fn quantize_group8(rows: &[f32], k: usize) -> Vec<Group8Block> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { quantize_group8_avx2(rows, k) };
    }
    quantize_group8_inline(rows, k, quantize_block)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_group8_avx2(rows: &[f32], k: usize) -> Vec<Group8Block> {
    // SAFETY: AVX2 is enabled here.
    quantize_group8_inline(rows, k, |c, v| unsafe { avx2::quantize_block(c, v) })
}

#[inline(always)]
fn quantize_group8_inline(
    rows: &[f32],
    k: usize,
    quantize: impl BlockQuantizer,
) -> Vec<Group8Block> {
    let mut group = vec![EMPTY_GROUP8_BLOCK; k / BLOCK];
    let mut values = [0i8; BLOCK];
    for (r, row) in rows.chunks_exact(k).take(8).enumerate() {
        for (block, chunk) in group.iter_mut().zip(row.chunks_exact(BLOCK)) {
            let (scale, sum) = quantize(chunk, &mut values);
            block.scales[r] = scale;
            block.sums[r] = sum;
            for (slice, four) in block.slices.iter_mut().zip(values.chunks_exact(4)) {
                slice[4 * r..4 * r + 4].copy_from_slice(four);
            }
        }
    }
    group
}

/// Quantizes up to four rows (`k` values each) straight into one interleaved group.
fn quantize_group(rows: &[f32], k: usize) -> Vec<GroupBlock> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { quantize_group_avx2(rows, k) };
    }
    quantize_group_inline(rows, k, quantize_block)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_group_avx2(rows: &[f32], k: usize) -> Vec<GroupBlock> {
    // SAFETY: AVX2 is enabled here.
    quantize_group_inline(rows, k, |c, v| unsafe { avx2::quantize_block(c, v) })
}

#[inline(always)]
fn quantize_group_inline(rows: &[f32], k: usize, quantize: impl BlockQuantizer) -> Vec<GroupBlock> {
    let mut group = vec![EMPTY_GROUP_BLOCK; k / BLOCK];
    for (r, row) in rows.chunks_exact(k).take(4).enumerate() {
        for (block, values) in group.iter_mut().zip(row.chunks_exact(BLOCK)) {
            let (scale, sum) = quantize(values, &mut block.values[r]);
            block.scales[r] = scale;
            block.sums[r] = sum;
        }
    }
    group
}

fn quantize_row(row: &[f32]) -> QuantizedRow {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { quantize_row_avx2(row) };
    }
    quantize_row_inline(row, quantize_block)
}

/// The same code compiled with AVX2 enabled, so the per-element loop vectorizes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(row: &[f32]) -> QuantizedRow {
    // SAFETY: AVX2 is enabled here.
    quantize_row_inline(row, |c, v| unsafe { avx2::quantize_block(c, v) })
}

#[inline(always)]
fn quantize_row_inline(row: &[f32], quantize: impl BlockQuantizer) -> QuantizedRow {
    let blocks = row.len() / BLOCK;
    let mut q = QuantizedRow {
        scales: Vec::with_capacity(blocks),
        sums: Vec::with_capacity(blocks),
        values: vec![0; row.len()],
    };
    for (chunk, values) in row
        .chunks_exact(BLOCK)
        .zip(q.values.chunks_exact_mut(BLOCK))
    {
        let (scale, sum) = quantize(chunk, values);
        q.scales.push(scale);
        q.sums.push(sum);
    }
    q
}

/// Quantizes one block of 32 values to 8 bits: `quantize_block` or its SIMD twin, which
/// gives bit for bit the same results.
trait BlockQuantizer: Fn(&[f32], &mut [i8]) -> (f32, f32) {}
impl<F: Fn(&[f32], &mut [i8]) -> (f32, f32)> BlockQuantizer for F {}

/// One block of 32 values to 8 bits; returns its scale and the scaled sum of its values
/// (for Q4_1's min term).
#[inline(always)]
fn quantize_block(chunk: &[f32], values: &mut [i8]) -> (f32, f32) {
    let amax = chunk.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (v, out) in chunk.iter().zip(values.iter_mut()) {
        // Half away from zero, as llama.cpp's reference `roundf` (ties to even follows
        // it less closely: see engine/tests/greedy_parity.rs).
        let x = (v * inverse).round() as i32;
        *out = x as i8;
        sum += x;
    }
    // Stored at f16 precision, as llama.cpp's Q8_0/Q8_1 blocks do, so that greedy decoding
    // follows llama.cpp's numerics as closely as possible.
    (round_to_f16(scale), round_to_f16(scale * sum as f32))
}

fn round_to_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

#[inline(always)]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Multiplies; `weights` holds `n` rows of `k / 32` blocks in `format`.
pub fn matmul(
    format: WeightFormat,
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    weights: &[u8],
    dst: &mut [f32],
) -> Result<(), String> {
    if !k.is_multiple_of(BLOCK) {
        return Err(format!("k = {k} is not a multiple of {BLOCK}"));
    }
    let row_bytes = k / BLOCK * format.block_bytes();
    if lhs.len() != m * k || weights.len() < n * row_bytes || dst.len() < m * n {
        return Err(format!(
            "bad sizes for ({m}, {k}, {n}): lhs {}, weights {}, dst {}",
            lhs.len(),
            weights.len(),
            dst.len()
        ));
    }
    if m == 0 || n == 0 || k == 0 {
        dst[..m * n].fill(0.0);
        return Ok(());
    }
    let dot = dot_fn(format);
    let dot4 = dot4_fn(format);
    // Enough work per task to amortise scheduling, few enough tasks to balance.
    let chunk = (n / (rayon::current_num_threads() * 8)).clamp(16, 512);
    if m == 1 {
        let row = quantize_row(lhs);
        dst[..n]
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(c, out)| {
                for (j, o) in out.iter_mut().enumerate() {
                    let col = c * chunk + j;
                    *o = dot(&weights[col * row_bytes..(col + 1) * row_bytes], &row);
                }
            });
        return Ok(());
    }
    // Several tokens per pass, so that each weight block is unpacked once for all of them:
    // groups of eight (the last padded with zero rows) while more than four tokens remain,
    // then one group of four for the rest.
    let in_eights = if m % 8 > 4 {
        m.next_multiple_of(8)
    } else {
        m - m % 8
    }
    .min(m);
    let eights: Vec<Vec<Group8Block>> = lhs[..in_eights * k]
        .par_chunks(8 * k)
        .map(|eight| quantize_group8(eight, k))
        .collect();
    let four = (in_eights < m).then(|| quantize_group(&lhs[in_eights * k..], k));
    let dot8 = dot8_fn(format);
    // Each task owns a range of columns: its piece of every output row.
    let mut tasks: Vec<Vec<&mut [f32]>> = Vec::new();
    for row in dst[..m * n].chunks_exact_mut(n) {
        for (c, piece) in row.chunks_mut(chunk).enumerate() {
            if c == tasks.len() {
                tasks.push(Vec::with_capacity(m));
            }
            tasks[c].push(piece);
        }
    }
    tasks.into_par_iter().enumerate().for_each(|(c, mut rows)| {
        let columns = rows.first().map_or(0, |r| r.len());
        let task_weights = weights
            .chunks_exact(row_bytes)
            .skip(c * chunk)
            .take(columns);
        for (j, w) in task_weights.enumerate() {
            for (g, group) in eights.iter().enumerate() {
                let mut eight = [0f32; 8];
                dot8(w, group, &mut eight);
                for (out, v) in rows[8 * g..].iter_mut().zip(eight) {
                    out[j] = v;
                }
            }
            if let Some(group) = &four {
                let mut four = [0f32; 4];
                dot4(w, group, &mut four);
                for (out, v) in rows[in_eights..].iter_mut().zip(four) {
                    out[j] = v;
                }
            }
        }
    });
    Ok(())
}

type DotFn = fn(&[u8], &QuantizedRow) -> f32;
/// Dots one weight row with a group of four activation rows.
type Dot4Fn = fn(&[u8], &[GroupBlock], &mut [f32; 4]);

/// Dots one weight row with a group of eight activation rows.
type Dot8Fn = fn(&[u8], &[Group8Block], &mut [f32; 8]);

fn dot8_fn(format: WeightFormat) -> Dot8Fn {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        return match format {
            WeightFormat::Q4_1 => |w, x, out| unsafe { avx2::dot8_q4_1(w, x, out) },
            WeightFormat::Q5_0 => |w, x, out| unsafe { avx2::dot8_q5_0(w, x, out) },
            WeightFormat::Q8_0 => |w, x, out| unsafe { avx2::dot8_q8_0(w, x, out) },
        };
    }
    match format {
        WeightFormat::Q4_1 => |w, x, out| dot8_portable(dot_q4_1_portable, w, x, out),
        WeightFormat::Q5_0 => |w, x, out| dot8_portable(dot_q5_0_portable, w, x, out),
        WeightFormat::Q8_0 => |w, x, out| dot8_portable(dot_q8_0_portable, w, x, out),
    }
}

fn dot8_portable(dot: DotFn, w: &[u8], x: &[Group8Block], out: &mut [f32; 8]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot(w, &group8_row(x, r));
    }
}

/// The `r`th row of an eight-row group, for the one-row kernels.
fn group8_row(x: &[Group8Block], r: usize) -> QuantizedRow {
    QuantizedRow {
        scales: x.iter().map(|b| b.scales[r]).collect(),
        sums: x.iter().map(|b| b.sums[r]).collect(),
        values: x
            .iter()
            .flat_map(|b| {
                b.slices
                    .iter()
                    .flat_map(move |s| s[4 * r..4 * r + 4].to_vec())
            })
            .collect(),
    }
}

fn dot4_fn(format: WeightFormat) -> Dot4Fn {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        return match format {
            WeightFormat::Q4_1 => |w, x, out| unsafe { avx2::dot4_q4_1(w, x, out) },
            WeightFormat::Q5_0 => |w, x, out| unsafe { avx2::dot4_q5_0(w, x, out) },
            WeightFormat::Q8_0 => |w, x, out| unsafe { avx2::dot4_q8_0(w, x, out) },
        };
    }
    match format {
        WeightFormat::Q4_1 => dot4_q4_1_portable,
        WeightFormat::Q5_0 => dot4_q5_0_portable,
        WeightFormat::Q8_0 => dot4_q8_0_portable,
    }
}

fn dot_fn(format: WeightFormat) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        return match format {
            WeightFormat::Q4_1 => |w, x| unsafe { avx2::dot_q4_1(w, x) },
            WeightFormat::Q5_0 => |w, x| unsafe { avx2::dot_q5_0(w, x) },
            WeightFormat::Q8_0 => |w, x| unsafe { avx2::dot_q8_0(w, x) },
        };
    }
    match format {
        WeightFormat::Q4_1 => dot_q4_1_portable,
        WeightFormat::Q5_0 => dot_q5_0_portable,
        WeightFormat::Q8_0 => dot_q8_0_portable,
    }
}

/// Value `j` of a Q5_0 block, in -16..=15.
#[inline(always)]
fn q5_0_value(block: &[u8], j: usize) -> i32 {
    let high_bits = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    let byte = block[6 + j % 16];
    let low = if j < 16 { byte & 0x0F } else { byte >> 4 };
    let high = ((high_bits >> j) & 1) as u8;
    i32::from(low | (high << 4)) - 16
}

fn dot_q5_0_portable(w: &[u8], x: &QuantizedRow) -> f32 {
    let mut total = 0f32;
    for (b, block) in w.chunks_exact(Q5_0_BYTES).enumerate() {
        let d = f16_at(block, 0);
        let xs = &x.values[b * BLOCK..(b + 1) * BLOCK];
        let sum: i32 = (0..BLOCK)
            .map(|j| q5_0_value(block, j) * i32::from(xs[j]))
            .sum();
        total += d * x.scales[b] * sum as f32;
    }
    total
}

fn dot4_q5_0_portable(w: &[u8], x: &[GroupBlock], out: &mut [f32; 4]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_q5_0_portable(w, &group_row(x, r));
    }
}

fn dot_q4_1_portable(w: &[u8], x: &QuantizedRow) -> f32 {
    let mut total = 0f32;
    for (b, block) in w.chunks_exact(Q4_1_BYTES).enumerate() {
        let (d, min) = (f16_at(block, 0), f16_at(block, 2));
        let xs = &x.values[b * BLOCK..(b + 1) * BLOCK];
        let mut sum = 0i32;
        for j in 0..16 {
            let byte = block[4 + j];
            sum += i32::from(byte & 0x0F) * i32::from(xs[j]);
            sum += i32::from(byte >> 4) * i32::from(xs[j + 16]);
        }
        total += d * x.scales[b] * sum as f32 + min * x.sums[b];
    }
    total
}

/// The `r`th row of a group, for the one-row kernels.
fn group_row(x: &[GroupBlock], r: usize) -> QuantizedRow {
    QuantizedRow {
        scales: x.iter().map(|b| b.scales[r]).collect(),
        sums: x.iter().map(|b| b.sums[r]).collect(),
        values: x.iter().flat_map(|b| b.values[r]).collect(),
    }
}

fn dot4_q4_1_portable(w: &[u8], x: &[GroupBlock], out: &mut [f32; 4]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_q4_1_portable(w, &group_row(x, r));
    }
}

fn dot4_q8_0_portable(w: &[u8], x: &[GroupBlock], out: &mut [f32; 4]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_q8_0_portable(w, &group_row(x, r));
    }
}

fn dot_q8_0_portable(w: &[u8], x: &QuantizedRow) -> f32 {
    let mut total = 0f32;
    for (b, block) in w.chunks_exact(Q8_0_BYTES).enumerate() {
        let d = f16_at(block, 0);
        let xs = &x.values[b * BLOCK..(b + 1) * BLOCK];
        let sum: i32 = block[2..]
            .iter()
            .zip(xs)
            .map(|(&q, &v)| i32::from(q as i8) * i32::from(v))
            .sum();
        total += d * x.scales[b] * sum as f32;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Group8Block, GroupBlock, Q4_1_BYTES, Q5_0_BYTES, Q8_0_BYTES, QuantizedRow};

    /// `super::quantize_block`, vectorized, with the same results bit for bit: the same
    /// products, rounded half away from zero, and an exact integer sum. (Called once per
    /// block: the callers' closures can't take on their target features.)
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_block(chunk: &[f32], values: &mut [i8]) -> (f32, f32) {
        assert!(chunk.len() >= BLOCK && values.len() >= BLOCK);
        // SAFETY (whole body): 32 values in and out, checked above.
        unsafe {
            let input = chunk.as_ptr();
            let v = [0, 8, 16, 24].map(|at| _mm256_loadu_ps(input.add(at)));
            let sign = _mm256_set1_ps(-0.0);
            let abs = v.map(|x| _mm256_andnot_ps(sign, x));
            let max8 = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
            let max4 = _mm_max_ps(
                _mm256_castps256_ps128(max8),
                _mm256_extractf128_ps::<1>(max8),
            );
            let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
            let amax = _mm_cvtss_f32(_mm_max_ss(max2, _mm_shuffle_ps::<0x55>(max2, max2)));
            let scale = amax / 127.0;
            let inverse = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let q = v.map(|x| {
                let x = _mm256_mul_ps(x, inverse);
                // roundf: truncate, then step away from zero when the dropped part is at
                // least one half (exact: |x| < 2^23).
                let truncated = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
                let dropped = _mm256_andnot_ps(sign, _mm256_sub_ps(x, truncated));
                let away = _mm256_cmp_ps::<_CMP_GE_OQ>(dropped, _mm256_set1_ps(0.5));
                let step = _mm256_or_ps(_mm256_and_ps(x, sign), _mm256_set1_ps(1.0));
                _mm256_cvttps_epi32(_mm256_add_ps(truncated, _mm256_and_ps(away, step)))
            });
            // Bytes in order: packing interleaves 128-bit lanes, the permutation undoes it.
            let bytes = _mm256_permutevar8x32_epi32(
                _mm256_packs_epi16(
                    _mm256_packs_epi32(q[0], q[1]),
                    _mm256_packs_epi32(q[2], q[3]),
                ),
                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
            );
            _mm256_storeu_si256(values.as_mut_ptr().cast(), bytes);
            let sum8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let sum4 = _mm_add_epi32(
                _mm256_castsi256_si128(sum8),
                _mm256_extracti128_si256::<1>(sum8),
            );
            let sum2 = _mm_add_epi32(sum4, _mm_unpackhi_epi64(sum4, sum4));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum2, _mm_shuffle_epi32::<1>(sum2)));
            (
                super::round_to_f16(scale),
                super::round_to_f16(scale * sum as f32),
            )
        }
    }

    /// Bytes `at..at + 4` in every 32-bit lane.
    #[inline(always)]
    unsafe fn broadcast4(bytes: &[u8], at: usize) -> __m256i {
        debug_assert!(at + 4 <= bytes.len());
        // SAFETY: the caller keeps `at + 4` within `bytes`.
        unsafe { _mm256_set1_epi32(bytes.as_ptr().add(at).cast::<i32>().read_unaligned()) }
    }

    /// The eight slices' accumulators added in `horizontal_sum`'s order, lane by lane: a
    /// token's result in a group of eight is bit for bit its result alone.
    #[inline(always)]
    unsafe fn sum_slices(acc: &[__m256; 8]) -> __m256 {
        // SAFETY: AVX is enabled by the callers.
        unsafe {
            let even = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
            let odd = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
            _mm256_add_ps(even, odd)
        }
    }

    /// Adds slice `s` of a block of signed weights (`weights`: the slice in every lane)
    /// times a group of eight tokens, one token per lane, to `acc`: the one-row kernels'
    /// lane `s`, for each token.
    #[inline(always)]
    unsafe fn dot8_signed_slice(weights: __m256i, ds: __m256, xs: &[i8; BLOCK], acc: &mut __m256) {
        // SAFETY: an aligned 32-byte slice (`Group8Block` is 32-aligned); AVX2 is enabled by
        // the callers.
        unsafe {
            let xs = _mm256_load_si256(xs.as_ptr().cast());
            // maddubs needs one unsigned operand: move the weights' signs onto the inputs.
            let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                _mm256_maddubs_epi16(
                    _mm256_sign_epi8(weights, weights),
                    _mm256_sign_epi8(xs, weights),
                ),
                _mm256_set1_epi16(1),
            ));
            *acc = _mm256_fmadd_ps(ds, products, *acc);
        }
    }

    /// Each token's block scale times the weight block's: `d * scale`, lane by lane.
    #[inline(always)]
    unsafe fn scales8(d: f32, xb: &Group8Block) -> __m256 {
        // SAFETY: eight f32 at an aligned address.
        unsafe { _mm256_mul_ps(_mm256_set1_ps(d), _mm256_load_ps(xb.scales.as_ptr())) }
    }

    /// # Safety
    /// AVX2/FMA/F16C. Each lane sums in the same order as `dot_q4_1`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot8_q4_1(w: &[u8], x: &[Group8Block], out: &mut [f32; 8]) {
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut min_terms = _mm256_setzero_ps();
        for (block, xb) in w.chunks_exact(Q4_1_BYTES).zip(x) {
            // SAFETY (whole body): 16 bytes of nibbles at block[4..20]; aligned fields in `xb`.
            unsafe {
                let (d, min) = two_f16(block);
                let ds = scales8(d, xb);
                let sums = _mm256_load_ps(xb.sums.as_ptr());
                min_terms = _mm256_add_ps(min_terms, _mm256_mul_ps(_mm256_set1_ps(min), sums));
                // Packed byte j holds value j (low nibble) and value j + 16 (high nibble):
                // four packed bytes are slice s and slice s + 4.
                for s in 0..4 {
                    let packed = broadcast4(block, 4 + 4 * s);
                    let low = _mm256_and_si256(packed, mask);
                    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask);
                    for (slice, weights) in [(s, low), (s + 4, high)] {
                        let xs = _mm256_load_si256(xb.slices[slice].as_ptr().cast());
                        let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                            _mm256_maddubs_epi16(weights, xs),
                            ones,
                        ));
                        acc[slice] = _mm256_fmadd_ps(ds, products, acc[slice]);
                    }
                }
            }
        }
        let total = _mm256_add_ps(unsafe { sum_slices(&acc) }, min_terms);
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), total) };
    }

    /// # Safety
    /// AVX2/FMA/F16C. Each lane sums in the same order as `dot_q8_0`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot8_q8_0(w: &[u8], x: &[Group8Block], out: &mut [f32; 8]) {
        let mut acc = [_mm256_setzero_ps(); 8];
        for (block, xb) in w.chunks_exact(Q8_0_BYTES).zip(x) {
            // SAFETY: 32 bytes of values at block[2..34].
            unsafe {
                let (d, _) = two_f16(block);
                let ds = scales8(d, xb);
                for (s, a) in acc.iter_mut().enumerate() {
                    dot8_signed_slice(broadcast4(block, 2 + 4 * s), ds, &xb.slices[s], a);
                }
            }
        }
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum_slices(&acc)) };
    }

    /// # Safety
    /// AVX2/FMA/F16C. Each lane sums in the same order as `dot_q5_0`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot8_q5_0(w: &[u8], x: &[Group8Block], out: &mut [f32; 8]) {
        let mut acc = [_mm256_setzero_ps(); 8];
        for (block, xb) in w.chunks_exact(Q5_0_BYTES).zip(x) {
            // SAFETY: a whole Q5_0 block.
            unsafe {
                let (d, _) = two_f16(block);
                let ds = scales8(d, xb);
                let values = q5_0_bytes(block);
                for (s, a) in acc.iter_mut().enumerate() {
                    let slice = _mm256_permutevar8x32_epi32(values, _mm256_set1_epi32(s as i32));
                    dot8_signed_slice(slice, ds, &xb.slices[s], a);
                }
            }
        }
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum_slices(&acc)) };
    }

    /// The two f16 values at the start of a block, as f32.
    #[inline(always)]
    unsafe fn two_f16(block: &[u8]) -> (f32, f32) {
        // SAFETY: every block starts with at least 4 bytes; F16C comes with AVX2 here.
        unsafe {
            let raw =
                _mm_cvtsi32_si128(i32::from_le_bytes([block[0], block[1], block[2], block[3]]));
            let pair = _mm_cvtph_ps(raw);
            (
                _mm_cvtss_f32(pair),
                _mm_cvtss_f32(_mm_shuffle_ps::<0x55>(pair, pair)),
            )
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        let low = _mm256_castps256_ps128(v);
        let high = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(low, high);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0x55>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `w` holds `x.scales.len()` Q4_1 blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_1(w: &[u8], x: &QuantizedRow) -> f32 {
        let blocks = x.scales.len().min(w.len() / Q4_1_BYTES);
        let mask = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut min_terms = 0f32;
        for b in 0..blocks {
            let block = &w[b * Q4_1_BYTES..(b + 1) * Q4_1_BYTES];
            let (d, min) = unsafe { two_f16(block) };
            // SAFETY: 16 bytes at block[4..20] and 32 at values[b*32..], in bounds.
            let packed = unsafe { _mm_loadu_si128(block.as_ptr().add(4).cast()) };
            let low = _mm_and_si128(packed, mask);
            let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
            let weights = _mm256_set_m128i(high, low);
            let xs = unsafe { _mm256_loadu_si256(x.values.as_ptr().add(b * BLOCK).cast()) };
            let pairs = _mm256_maddubs_epi16(weights, xs);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x.scales[b]), sums, acc);
            min_terms += min * x.sums[b];
        }
        unsafe { horizontal_sum(acc) + min_terms }
    }

    /// # Safety
    /// AVX2/FMA/F16C. Sums in the same order as `dot_q4_1`, so a row's result does not
    /// depend on whether it was computed alone or in a group.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q4_1(w: &[u8], x: &[GroupBlock], out: &mut [f32; 4]) {
        let mask = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut min_terms = _mm_setzero_ps();
        for (block, xb) in w.chunks_exact(Q4_1_BYTES).zip(x) {
            let (d, min) = unsafe { two_f16(block) };
            // SAFETY: 16 bytes at block[4..20]; 32 in each row's values.
            let packed = unsafe { _mm_loadu_si128(block.as_ptr().add(4).cast()) };
            let low = _mm_and_si128(packed, mask);
            let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
            let weights = _mm256_set_m128i(high, low);
            // A product, then a sum: as `min_terms += min * sums[b]` rounds in `dot_q4_1`.
            let sums = unsafe { _mm_loadu_ps(xb.sums.as_ptr()) };
            min_terms = _mm_add_ps(min_terms, _mm_mul_ps(_mm_set1_ps(min), sums));
            for ((a, values), scale) in acc.iter_mut().zip(&xb.values).zip(xb.scales) {
                let xs = unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
                let products =
                    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(weights, xs), ones));
                *a = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), products, *a);
            }
        }
        let mut mins = [0f32; 4];
        unsafe { _mm_storeu_ps(mins.as_mut_ptr(), min_terms) };
        for r in 0..4 {
            out[r] = unsafe { horizontal_sum(acc[r]) } + mins[r];
        }
    }

    /// # Safety
    /// AVX2/FMA/F16C. Sums in the same order as `dot_q8_0`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q8_0(w: &[u8], x: &[GroupBlock], out: &mut [f32; 4]) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (block, xb) in w.chunks_exact(Q8_0_BYTES).zip(x) {
            let (d, _) = unsafe { two_f16(block) };
            // SAFETY: 32 bytes at block[2..34] and in each row's values.
            let weights = unsafe { _mm256_loadu_si256(block.as_ptr().add(2).cast()) };
            let abs_weights = _mm256_sign_epi8(weights, weights);
            for ((a, values), scale) in acc.iter_mut().zip(&xb.values).zip(xb.scales) {
                let xs = unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
                let signed_xs = _mm256_sign_epi8(xs, weights);
                let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                    _mm256_maddubs_epi16(abs_weights, signed_xs),
                    ones,
                ));
                *a = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), products, *a);
            }
        }
        for r in 0..4 {
            out[r] = unsafe { horizontal_sum(acc[r]) };
        }
    }

    /// A Q5_0 block's 32 values as signed bytes in -16..=15: the low nibbles, with 0xF0
    /// or'ed in where the fifth bit is clear (nibble - 16 in two's complement).
    #[inline(always)]
    unsafe fn q5_0_bytes(block: &[u8]) -> __m256i {
        // SAFETY: a Q5_0 block is 22 bytes: the high bits at 2..6, nibbles at 6..22.
        unsafe {
            let high_bits = i32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            // Byte j of the vector takes byte j / 8 of the bits...
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(high_bits),
                _mm256_set_epi64x(
                    0x0303_0303_0303_0303,
                    0x0202_0202_0202_0202,
                    0x0101_0101_0101_0101,
                    0,
                ),
            );
            // ...and is all ones once every bit but its own (j % 8) is set too.
            let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
            let bit_set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
            let packed = _mm_loadu_si128(block.as_ptr().add(6).cast());
            let mask = _mm_set1_epi8(0x0F);
            let low = _mm_and_si128(packed, mask);
            let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
            let nibbles = _mm256_set_m128i(high, low);
            _mm256_or_si256(
                nibbles,
                _mm256_andnot_si256(bit_set, _mm256_set1_epi8(0xF0_u8 as i8)),
            )
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `w` holds `x.scales.len()` Q5_0 blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q5_0(w: &[u8], x: &QuantizedRow) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for ((block, xs), scale) in w
            .chunks_exact(Q5_0_BYTES)
            .zip(x.values.chunks_exact(BLOCK))
            .zip(&x.scales)
        {
            let (d, _) = unsafe { two_f16(block) };
            let weights = unsafe { q5_0_bytes(block) };
            // SAFETY: 32 values per block.
            let xs = unsafe { _mm256_loadu_si256(xs.as_ptr().cast()) };
            // maddubs needs one unsigned operand: move the weights' signs onto the inputs.
            let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                _mm256_maddubs_epi16(
                    _mm256_sign_epi8(weights, weights),
                    _mm256_sign_epi8(xs, weights),
                ),
                ones,
            ));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), products, acc);
        }
        unsafe { horizontal_sum(acc) }
    }

    /// # Safety
    /// AVX2/FMA/F16C. Sums in the same order as `dot_q5_0`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q5_0(w: &[u8], x: &[GroupBlock], out: &mut [f32; 4]) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (block, xb) in w.chunks_exact(Q5_0_BYTES).zip(x) {
            let (d, _) = unsafe { two_f16(block) };
            let weights = unsafe { q5_0_bytes(block) };
            let abs_weights = _mm256_sign_epi8(weights, weights);
            for ((a, values), scale) in acc.iter_mut().zip(&xb.values).zip(xb.scales) {
                let xs = unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
                let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                    _mm256_maddubs_epi16(abs_weights, _mm256_sign_epi8(xs, weights)),
                    ones,
                ));
                *a = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), products, *a);
            }
        }
        for r in 0..4 {
            out[r] = unsafe { horizontal_sum(acc[r]) };
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `w` holds `x.scales.len()` Q8_0 blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_0(w: &[u8], x: &QuantizedRow) -> f32 {
        let blocks = x.scales.len().min(w.len() / Q8_0_BYTES);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            let block = &w[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
            let (d, _) = unsafe { two_f16(block) };
            // SAFETY: 32 bytes at block[2..34] and at values[b*32..], in bounds.
            let weights = unsafe { _mm256_loadu_si256(block.as_ptr().add(2).cast()) };
            let xs = unsafe { _mm256_loadu_si256(x.values.as_ptr().add(b * BLOCK).cast()) };
            // maddubs needs one unsigned operand: move the weights' signs onto the inputs.
            let abs_weights = _mm256_sign_epi8(weights, weights);
            let signed_xs = _mm256_sign_epi8(xs, weights);
            let pairs = _mm256_maddubs_epi16(abs_weights, signed_xs);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x.scales[b]), sums, acc);
        }
        unsafe { horizontal_sum(acc) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_1_block(values: &[f32; 32]) -> Vec<u8> {
        let min = values.iter().cloned().fold(f32::INFINITY, f32::min);
        let max = values.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let mut out = Vec::new();
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(half::f16::from_f32(min).to_le_bytes());
        for j in 0..16 {
            let q = |v: f32| (((v - min) / d).round() as u8).min(15);
            out.push(q(values[j]) | (q(values[j + 16]) << 4));
        }
        out
    }

    fn dequantize(format: WeightFormat, row: &[u8], t: usize) -> f32 {
        let (b, i) = (t / 32, t % 32);
        match format {
            WeightFormat::Q4_1 => {
                let block = &row[b * Q4_1_BYTES..];
                let byte = block[4 + i % 16];
                let q = if i < 16 { byte & 0x0F } else { byte >> 4 };
                f16_at(block, 0) * f32::from(q) + f16_at(block, 2)
            }
            WeightFormat::Q5_0 => {
                let block = &row[b * Q5_0_BYTES..];
                let high_bits = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                let byte = block[6 + i % 16];
                let low = if i < 16 { byte & 0x0F } else { byte >> 4 };
                let q = i32::from(low) + 16 * ((high_bits >> i) & 1) as i32 - 16;
                f16_at(block, 0) * q as f32
            }
            WeightFormat::Q8_0 => {
                let block = &row[b * Q8_0_BYTES..];
                f16_at(block, 0) * f32::from(block[2 + i] as i8)
            }
        }
    }

    /// As llama.cpp's reference quantizer: the value of largest magnitude maps to -16.
    fn q5_0_block(values: &[f32; 32]) -> Vec<u8> {
        let max = values
            .iter()
            .copied()
            .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        let d = max / -16.0;
        let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| ((v * inverse + 16.5) as i32).clamp(0, 31) as u32;
        let mut high_bits = 0u32;
        let mut nibbles = [0u8; 16];
        for j in 0..16 {
            let (a, b) = (q(values[j]), q(values[j + 16]));
            nibbles[j] = (a & 0x0F) as u8 | (((b & 0x0F) as u8) << 4);
            high_bits |= ((a >> 4) & 1) << j;
            high_bits |= ((b >> 4) & 1) << (j + 16);
        }
        let mut out = Vec::new();
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(high_bits.to_le_bytes());
        out.extend(nibbles);
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_quantizer_equals_the_scalar_one() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        // Values landing exactly on halves (ties round away from zero), zero blocks,
        // tiny and large magnitudes, both signs.
        let mut blocks: Vec<[f32; 32]> = vec![[0.0; 32]];
        blocks.push(std::array::from_fn(|i| (i as f32 - 15.5) * 127.0 / 15.5));
        blocks.push(std::array::from_fn(|i| {
            if i == 0 { 127.0 } else { i as f32 - 16.5 }
        }));
        let mut seed = 7u64;
        for magnitude in [1e-6f32, 0.3, 1.0, 40.0, 3e4] {
            for _ in 0..200 {
                blocks.push(std::array::from_fn(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * magnitude
                }));
            }
        }
        for block in &blocks {
            let (mut scalar, mut simd) = ([0i8; 32], [0i8; 32]);
            let expected = quantize_block(block, &mut scalar);
            // SAFETY: AVX2 was detected above.
            let got = unsafe { avx2::quantize_block(block, &mut simd) };
            assert_eq!(expected, got, "{block:?}");
            assert_eq!(scalar, simd, "{block:?}");
        }
    }

    #[test]
    fn simd_and_portable_kernels_agree_with_float_math() {
        let k = 320;
        let n = 5;
        let weights_f: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        // Thirteen rows: two groups of eight, the second padded. Their first twelve, below:
        // a group of eight and a group of four.
        let m = 13;
        let lhs: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
            .collect();
        let mut q4 = Vec::new();
        let mut q5 = Vec::new();
        let mut q8 = Vec::new();
        for row in weights_f.chunks_exact(32) {
            let block: [f32; 32] = row.try_into().unwrap();
            q4.extend(q4_1_block(&block));
            q5.extend(q5_0_block(&block));
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            q8.extend(half::f16::from_f32(amax / 127.0).to_le_bytes());
            q8.extend(row.iter().map(|v| (v / (amax / 127.0)).round() as i8 as u8));
        }
        for (format, weights) in [
            (WeightFormat::Q4_1, &q4),
            (WeightFormat::Q5_0, &q5),
            (WeightFormat::Q8_0, &q8),
        ] {
            let mut dst = vec![0f32; m * n];
            matmul(format, (m, k, n), &lhs, weights, &mut dst).unwrap();
            let rows: Vec<QuantizedRow> = lhs.chunks_exact(k).map(quantize_row).collect();
            let portable = match format {
                WeightFormat::Q4_1 => dot_q4_1_portable,
                WeightFormat::Q5_0 => dot_q5_0_portable,
                WeightFormat::Q8_0 => dot_q8_0_portable,
            };
            let row_bytes = k / 32 * format.block_bytes();
            // A row computed in a group of four or eight gives exactly what it gives alone:
            // batched output equals unbatched output.
            let mut twelve = vec![0f32; 12 * n];
            matmul(format, (12, k, n), &lhs[..12 * k], weights, &mut twelve).unwrap();
            for i in 0..m {
                let mut alone = vec![0f32; n];
                matmul(
                    format,
                    (1, k, n),
                    &lhs[i * k..(i + 1) * k],
                    weights,
                    &mut alone,
                )
                .unwrap();
                assert_eq!(alone, dst[i * n..(i + 1) * n], "{format:?} row {i} of {m}");
                if i < 12 {
                    assert_eq!(
                        alone,
                        twelve[i * n..(i + 1) * n],
                        "{format:?} row {i} of 12"
                    );
                }
            }
            for i in 0..m {
                for j in 0..n {
                    // Exact math on the dequantized weights: only activation rounding remains.
                    let row = &weights[j * row_bytes..(j + 1) * row_bytes];
                    let products: Vec<f32> = (0..k)
                        .map(|t| lhs[i * k + t] * dequantize(format, row, t))
                        .collect();
                    let exact: f32 = products.iter().sum();
                    // Rounding errors scale with the terms, not with their (cancelling) sum.
                    let magnitude: f32 = products.iter().map(|p| p.abs()).sum();
                    let simd = dst[i * n + j];
                    let scalar = portable(&weights[j * row_bytes..(j + 1) * row_bytes], &rows[i]);
                    assert!(
                        (simd - scalar).abs() < 1e-3,
                        "{format:?} simd {simd} scalar {scalar}"
                    );
                    assert!(
                        (simd - exact).abs() < 0.01 * magnitude.max(1.0),
                        "{format:?} {simd} vs {exact} (terms' magnitude {magnitude})"
                    );
                }
            }
        }
    }
}
