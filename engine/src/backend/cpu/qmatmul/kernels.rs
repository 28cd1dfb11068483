//! The dot-product kernels behind `matmul`, one per weight format and activation layout:
//! AVX2 where the CPU has it (chosen at run time), portable Rust otherwise.

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::quantize::{Group4Block, Group8Block, GroupBlock, QuantizedRow};
use super::{BLOCK, Q4_1_BYTES, Q5_0_BYTES, Q8_0_BYTES, WeightFormat};

#[inline(always)]
pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dots one weight row with one activation row.
pub(super) type DotFn = fn(&[u8], &QuantizedRow) -> f32;
/// Dots one weight row with a group of four activation rows.
pub(super) type Dot4Fn = fn(&[u8], &[Group4Block], &mut [f32; 4]);
/// Dots one weight row with a group of eight activation rows.
pub(super) type Dot8Fn = fn(&[u8], &[Group8Block], &mut [f32; 8]);
/// Dots one weight row with two groups of eight activation rows.
pub(super) type DotPairFn = fn(&[u8], [&[Group8Block]; 2], [&mut [f32; 8]; 2]);

/// A format's kernels for each activation layout, picked once per product.
///
/// Every kernel sums in one order, so that a token's result is the same bits whichever
/// kernel computed it, alone or batched. Each block `b` contributes its exact integer dot
/// product `i`: `sum = fma(d * x_scale, i, sum)`, then for Q4_1 `sum = fma(min, x_sum,
/// sum)`. The row's blocks go eight at a time into eight partial sums (block `b` into
/// `b % 8`), its last `blocks % 8` blocks one after the other into a sum of their own;
/// the result is `sum_partials(partials) + last`. (llama.cpp's AVX2 kernels keep eight
/// lanes of partial products per block instead: the results differ in the last bits, see
/// `engine/tests/greedy_parity.rs`.)
#[derive(Clone, Copy)]
pub(super) struct Kernels {
    pub(super) dot: DotFn,
    pub(super) dot4: Dot4Fn,
    pub(super) dot8: Dot8Fn,
    /// Two groups of eight that share each unpacked weight block, where a format has such a
    /// kernel (AVX2 Q4_1 and Q5_0); else the groups go through `dot8` one by one.
    pub(super) dot8_pair: Option<DotPairFn>,
}

impl Kernels {
    pub(super) fn new(format: WeightFormat) -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            // SAFETY (every kernel): the features were just detected.
            return match format {
                WeightFormat::Q4_1 => Self {
                    dot: |w, x| unsafe { avx2::dot::<avx2::Q4_1>(w, x) },
                    dot4: |w, x, out| unsafe { avx2::dot_group::<avx2::Q4_1, 4>(w, x, out) },
                    dot8: |w, x, out| unsafe { avx2::dot_group::<avx2::Q4_1, 8>(w, x, out) },
                    dot8_pair: Some(|w, x, out| unsafe {
                        avx2::dot_group_pair::<avx2::Q4_1>(w, x, out)
                    }),
                },
                WeightFormat::Q5_0 => Self {
                    dot: |w, x| unsafe { avx2::dot::<avx2::Q5_0>(w, x) },
                    dot4: |w, x, out| unsafe { avx2::dot_group::<avx2::Q5_0, 4>(w, x, out) },
                    dot8: |w, x, out| unsafe { avx2::dot_group::<avx2::Q5_0, 8>(w, x, out) },
                    dot8_pair: Some(|w, x, out| unsafe {
                        avx2::dot_group_pair::<avx2::Q5_0>(w, x, out)
                    }),
                },
                WeightFormat::Q8_0 => Self {
                    dot: |w, x| unsafe { avx2::dot::<avx2::Q8_0>(w, x) },
                    dot4: |w, x, out| unsafe { avx2::dot_group::<avx2::Q8_0, 4>(w, x, out) },
                    dot8: |w, x, out| unsafe { avx2::dot_group::<avx2::Q8_0, 8>(w, x, out) },
                    dot8_pair: None,
                },
            };
        }
        // Portable: each row of a group through the one-row kernel.
        match format {
            WeightFormat::Q4_1 => Self {
                dot: dot_q4_1_portable,
                dot4: |w, x, out| dot_group_portable(dot_q4_1_portable, w, x, out),
                dot8: |w, x, out| dot_group_portable(dot_q4_1_portable, w, x, out),
                dot8_pair: None,
            },
            WeightFormat::Q5_0 => Self {
                dot: dot_q5_0_portable,
                dot4: |w, x, out| dot_group_portable(dot_q5_0_portable, w, x, out),
                dot8: |w, x, out| dot_group_portable(dot_q5_0_portable, w, x, out),
                dot8_pair: None,
            },
            WeightFormat::Q8_0 => Self {
                dot: dot_q8_0_portable,
                dot4: |w, x, out| dot_group_portable(dot_q8_0_portable, w, x, out),
                dot8: |w, x, out| dot_group_portable(dot_q8_0_portable, w, x, out),
                dot8_pair: None,
            },
        }
    }
}

/// A group kernel from the one-row kernel, row by row.
fn dot_group_portable<const ROWS: usize>(
    dot: DotFn,
    w: &[u8],
    x: &[GroupBlock<ROWS>],
    out: &mut [f32; ROWS],
) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot(w, &group_row(x, r));
    }
}

/// The `r`th row of a group, for the one-row kernels.
fn group_row<const ROWS: usize>(x: &[GroupBlock<ROWS>], r: usize) -> QuantizedRow {
    let (lane, width) = (GroupBlock::<ROWS>::lane(r), GroupBlock::<ROWS>::WIDTH);
    QuantizedRow {
        scales: x.iter().map(|b| b.scales[lane]).collect(),
        sums: x.iter().map(|b| b.sums[lane]).collect(),
        values: x
            .iter()
            .flat_map(|b| {
                b.slices
                    .iter()
                    .flat_map(move |s| s[width * r..width * (r + 1)].iter().copied())
            })
            .collect(),
    }
}

/// The partial sums added pairwise, in the order every kernel uses.
fn sum_partials(p: &[f32; 8]) -> f32 {
    ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]))
}

/// A row's blocks in the kernels' order: `block(b)` gives block b's scale product `d *
/// x_scale`, its exact integer dot product and, for Q4_1, its min term `(min, x_sum)`.
fn portable_sum(blocks: usize, block: impl Fn(usize) -> (f32, i32, Option<(f32, f32)>)) -> f32 {
    let add = |sum: f32, b: usize| {
        let (ds, total, min_term) = block(b);
        let sum = ds.mul_add(total as f32, sum);
        min_term.map_or(sum, |(min, x_sum)| min.mul_add(x_sum, sum))
    };
    let full = blocks - blocks % 8;
    let mut partials = [0f32; 8];
    for b in 0..full {
        partials[b % 8] = add(partials[b % 8], b);
    }
    let last = (full..blocks).fold(0f32, add);
    sum_partials(&partials) + last
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

pub(super) fn dot_q5_0_portable(w: &[u8], x: &QuantizedRow) -> f32 {
    let blocks = x.scales.len().min(w.len() / Q5_0_BYTES);
    portable_sum(blocks, |b| {
        let block = &w[b * Q5_0_BYTES..(b + 1) * Q5_0_BYTES];
        let xs = &x.values[b * BLOCK..(b + 1) * BLOCK];
        let total = (0..BLOCK)
            .map(|j| q5_0_value(block, j) * i32::from(xs[j]))
            .sum();
        (f16_at(block, 0) * x.scales[b], total, None)
    })
}

pub(super) fn dot_q4_1_portable(w: &[u8], x: &QuantizedRow) -> f32 {
    let blocks = x.scales.len().min(w.len() / Q4_1_BYTES);
    portable_sum(blocks, |b| {
        let block = &w[b * Q4_1_BYTES..(b + 1) * Q4_1_BYTES];
        let xs = &x.values[b * BLOCK..(b + 1) * BLOCK];
        let mut total = 0i32;
        for j in 0..16 {
            let byte = block[4 + j];
            total += i32::from(byte & 0x0F) * i32::from(xs[j]);
            total += i32::from(byte >> 4) * i32::from(xs[j + 16]);
        }
        let min_term = (f16_at(block, 2), x.sums[b]);
        (f16_at(block, 0) * x.scales[b], total, Some(min_term))
    })
}

pub(super) fn dot_q8_0_portable(w: &[u8], x: &QuantizedRow) -> f32 {
    let blocks = x.scales.len().min(w.len() / Q8_0_BYTES);
    portable_sum(blocks, |b| {
        let block = &w[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
        let xs = &x.values[b * BLOCK..(b + 1) * BLOCK];
        let total = block[2..]
            .iter()
            .zip(xs)
            .map(|(&q, &v)| i32::from(q as i8) * i32::from(v))
            .sum();
        (f16_at(block, 0) * x.scales[b], total, None)
    })
}
