//! The dot-product kernels behind `matmul`, one per weight format and activation layout:
//! AVX2 where the CPU has it (chosen at run time), portable Rust otherwise.

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::quantize::{Group8Block, GroupBlock, QuantizedRow};
use super::{BLOCK, Q4_1_BYTES, Q5_0_BYTES, Q8_0_BYTES, WeightFormat};

#[inline(always)]
pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dots one weight row with one activation row.
pub(super) type DotFn = fn(&[u8], &QuantizedRow) -> f32;
/// Dots one weight row with a group of four activation rows.
pub(super) type Dot4Fn = fn(&[u8], &[GroupBlock], &mut [f32; 4]);
/// Dots one weight row with a group of eight activation rows.
pub(super) type Dot8Fn = fn(&[u8], &[Group8Block], &mut [f32; 8]);

/// A format's kernels for each activation layout, picked once per product.
#[derive(Clone, Copy)]
pub(super) struct Kernels {
    pub(super) dot: DotFn,
    pub(super) dot4: Dot4Fn,
    pub(super) dot8: Dot8Fn,
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
                    dot: |w, x| unsafe { avx2::dot_q4_1(w, x) },
                    dot4: |w, x, out| unsafe { avx2::dot4_q4_1(w, x, out) },
                    dot8: |w, x, out| unsafe { avx2::dot8_q4_1(w, x, out) },
                },
                WeightFormat::Q5_0 => Self {
                    dot: |w, x| unsafe { avx2::dot_q5_0(w, x) },
                    dot4: |w, x, out| unsafe { avx2::dot4_q5_0(w, x, out) },
                    dot8: |w, x, out| unsafe { avx2::dot8_q5_0(w, x, out) },
                },
                WeightFormat::Q8_0 => Self {
                    dot: |w, x| unsafe { avx2::dot_q8_0(w, x) },
                    dot4: |w, x, out| unsafe { avx2::dot4_q8_0(w, x, out) },
                    dot8: |w, x, out| unsafe { avx2::dot8_q8_0(w, x, out) },
                },
            };
        }
        // Portable: each row of a group through the one-row kernel.
        match format {
            WeightFormat::Q4_1 => Self {
                dot: dot_q4_1_portable,
                dot4: |w, x, out| dot4_portable(dot_q4_1_portable, w, x, out),
                dot8: |w, x, out| dot8_portable(dot_q4_1_portable, w, x, out),
            },
            WeightFormat::Q5_0 => Self {
                dot: dot_q5_0_portable,
                dot4: |w, x, out| dot4_portable(dot_q5_0_portable, w, x, out),
                dot8: |w, x, out| dot8_portable(dot_q5_0_portable, w, x, out),
            },
            WeightFormat::Q8_0 => Self {
                dot: dot_q8_0_portable,
                dot4: |w, x, out| dot4_portable(dot_q8_0_portable, w, x, out),
                dot8: |w, x, out| dot8_portable(dot_q8_0_portable, w, x, out),
            },
        }
    }
}

fn dot4_portable(dot: DotFn, w: &[u8], x: &[GroupBlock], out: &mut [f32; 4]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot(w, &group_row(x, r));
    }
}

fn dot8_portable(dot: DotFn, w: &[u8], x: &[Group8Block], out: &mut [f32; 8]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot(w, &group8_row(x, r));
    }
}

/// The `r`th row of a four-row group, for the one-row kernels.
fn group_row(x: &[GroupBlock], r: usize) -> QuantizedRow {
    QuantizedRow {
        scales: x.iter().map(|b| b.scales[r]).collect(),
        sums: x.iter().map(|b| b.sums[r]).collect(),
        values: x.iter().flat_map(|b| b.values[r]).collect(),
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
                    .flat_map(move |s| s[4 * r..4 * r + 4].iter().copied())
            })
            .collect(),
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

pub(super) fn dot_q5_0_portable(w: &[u8], x: &QuantizedRow) -> f32 {
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

pub(super) fn dot_q4_1_portable(w: &[u8], x: &QuantizedRow) -> f32 {
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

pub(super) fn dot_q8_0_portable(w: &[u8], x: &QuantizedRow) -> f32 {
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
