//! Activations quantized to 8 bits per 32-value block, as llama.cpp's Q8_0/Q8_1, in the
//! three layouts the kernels read: one row, groups of eight with one row per 32-bit vector
//! lane, and groups of four with one row per 64-bit lane.

use super::BLOCK;
#[cfg(target_arch = "x86_64")]
use super::avx2;

/// One activation row quantized to 8 bits: per block a scale, the scaled sum of its
/// values (for Q4_1's min term) and 32 signed values.
pub(super) struct QuantizedRow {
    pub(super) scales: Vec<f32>,
    pub(super) sums: Vec<f32>,
    pub(super) values: Vec<i8>,
}

/// `ROWS` (eight or four) quantized activation rows laid out for the group kernels, which
/// keep one token per `256 / ROWS`-bit vector lane. Per block: the rows' scales, sums and
/// value sums, row `r` in 32-bit lane `r * 8 / ROWS` (other lanes zero); then the block's
/// values in `ROWS` slices of `32 / ROWS`, each slice holding those values of all rows side
/// by side (`slices[s][w * r + i]` is value `w * s + i` of row `r`, with `w = 32 / ROWS`).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct GroupBlock<const ROWS: usize> {
    pub(super) scales: [f32; 8],
    pub(super) sums: [f32; 8],
    /// Each row's 32 quantized values added up (for Q5_0's offset of 16).
    pub(super) value_sums: [i32; 8],
    pub(super) slices: [[i8; BLOCK]; ROWS],
}

/// Eight rows, one per 32-bit lane, in slices of four values.
pub(super) type Group8Block = GroupBlock<8>;
/// Four rows, one per 64-bit lane, in slices of eight values.
pub(super) type Group4Block = GroupBlock<4>;

impl<const ROWS: usize> GroupBlock<ROWS> {
    const EMPTY: Self = Self {
        scales: [0.0; 8],
        sums: [0.0; 8],
        value_sums: [0; 8],
        slices: [[0; BLOCK]; ROWS],
    };

    /// Values per slice.
    pub(super) const WIDTH: usize = BLOCK / ROWS;

    /// The 32-bit lane of row `r`'s scale, sum and result.
    pub(super) const fn lane(r: usize) -> usize {
        r * 8 / ROWS
    }
}

/// Quantizes one block of 32 values to 8 bits, returning its scale and scaled sum:
/// `quantize_block` or its AVX2 twin, which gives the same bits.
type BlockQuantizer = fn(&[f32], &mut [i8]) -> (f32, f32);

fn block_quantizer() -> BlockQuantizer {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return |chunk, values| unsafe { avx2::quantize_block(chunk, values) };
    }
    quantize_block
}

/// Quantizes up to `ROWS` rows (`k` values each) straight into one group.
pub(super) fn quantize_group<const ROWS: usize>(rows: &[f32], k: usize) -> Vec<GroupBlock<ROWS>> {
    let quantize = block_quantizer();
    let width = GroupBlock::<ROWS>::WIDTH;
    let mut group = vec![GroupBlock::<ROWS>::EMPTY; k / BLOCK];
    let mut values = [0i8; BLOCK];
    for (r, row) in rows.chunks_exact(k).take(ROWS).enumerate() {
        let lane = GroupBlock::<ROWS>::lane(r);
        for (block, chunk) in group.iter_mut().zip(row.chunks_exact(BLOCK)) {
            let (scale, sum) = quantize(chunk, &mut values);
            block.scales[lane] = scale;
            block.sums[lane] = sum;
            block.value_sums[lane] = values.iter().map(|&v| i32::from(v)).sum();
            for (slice, part) in block.slices.iter_mut().zip(values.chunks_exact(width)) {
                slice[width * r..width * (r + 1)].copy_from_slice(part);
            }
        }
    }
    group
}

pub(super) fn quantize_row(row: &[f32]) -> QuantizedRow {
    let quantize = block_quantizer();
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

/// One block of 32 values to 8 bits; returns its scale and the scaled sum of its values
/// (for Q4_1's min term).
pub(super) fn quantize_block(chunk: &[f32], values: &mut [i8]) -> (f32, f32) {
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

pub(super) fn round_to_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}
