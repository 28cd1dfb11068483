//! The kernels against float math and against each other: SIMD and portable, one row and
//! groups, fused and separate products, the SIMD quantizer and the scalar one.

use super::kernels::*;
use super::quantize::{QuantizedRow, quantize_block, quantize_row};
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

/// `weights` (rows of 32-value blocks) in each of the three formats.
fn quantized_weights(weights: &[f32]) -> [(WeightFormat, Vec<u8>); 3] {
    let mut q4 = Vec::new();
    let mut q5 = Vec::new();
    let mut q8 = Vec::new();
    for row in weights.chunks_exact(32) {
        let block: [f32; 32] = row.try_into().unwrap();
        q4.extend(q4_1_block(&block));
        q5.extend(q5_0_block(&block));
        let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
        q8.extend(half::f16::from_f32(amax / 127.0).to_le_bytes());
        q8.extend(row.iter().map(|v| (v / (amax / 127.0)).round() as i8 as u8));
    }
    [
        (WeightFormat::Q4_1, q4),
        (WeightFormat::Q5_0, q5),
        (WeightFormat::Q8_0, q8),
    ]
}

#[test]
fn fused_products_equal_separate_ones() {
    let k = 96;
    let sizes = [7, 20, 33];
    let matrices: Vec<(WeightFormat, Vec<u8>, usize)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let values: Vec<f32> = (0..n * k)
                .map(|j| ((j * 31 + i * 7) % 53) as f32 / 20.0 - 1.3)
                .collect();
            let (format, bytes) = quantized_weights(&values)[i].clone();
            (format, bytes, n)
        })
        .collect();
    let weights = |i: usize| Weights {
        format: matrices[i].0,
        bytes: &matrices[i].1,
        rows: matrices[i].2,
    };
    for m in [1, 3, 8, 13, 16, 21] {
        let lhs: Vec<f32> = (0..m * k)
            .map(|i| ((i * 11 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let separate: Vec<Vec<f32>> = (0..3)
            .map(|i| {
                let mut dst = vec![0f32; m * sizes[i]];
                matmul(
                    matrices[i].0,
                    (m, k, sizes[i]),
                    &lhs,
                    &matrices[i].1,
                    &mut dst,
                )
                .unwrap();
                dst
            })
            .collect();
        let mut fused: Vec<Vec<f32>> = sizes.iter().map(|n| vec![0f32; m * n]).collect();
        let mut products: Vec<(Weights<'_>, &mut [f32])> = fused
            .iter_mut()
            .enumerate()
            .map(|(i, dst)| (weights(i), dst.as_mut_slice()))
            .collect();
        matmul_shared(m, k, &lhs, &mut products).unwrap();
        assert_eq!(fused, separate, "{m} rows");

        // Gate and up of the same size: the second and third matrices' first 20 rows.
        let (gate, up) = (
            weights(1),
            Weights {
                rows: 20,
                ..weights(2)
            },
        );
        let mut gated = vec![0f32; m * 20];
        matmul_swiglu(m, k, &lhs, gate, up, &mut gated).unwrap();
        for t in 0..m {
            for j in 0..20 {
                let g = separate[1][t * 20 + j];
                let u = separate[2][t * 33 + j];
                assert_eq!(gated[t * 20 + j], silu::silu(g) * u, "{m} rows");
            }
        }
    }
    let mut dst = vec![0f32; 7];
    let short = Weights {
        rows: 7,
        ..weights(0)
    };
    assert!(matmul_shared(1, k, &[0.0; 95], &mut [(short, &mut dst)]).is_err());
    // An empty matrix is an empty product, not a panic.
    let empty = Weights {
        rows: 0,
        ..weights(0)
    };
    for m in [1, 8] {
        let lhs = vec![0.5; m * k];
        matmul_shared(m, k, &lhs, &mut [(empty, &mut [])]).unwrap();
        matmul_swiglu(m, k, &lhs, empty, empty, &mut []).unwrap();
    }
}

#[test]
fn simd_and_portable_kernels_agree_with_float_math() {
    // Rows of 8 blocks (whole groups only), 10 (a group and two last blocks) and 3 (last
    // blocks only).
    for k in [256, 320, 96] {
        kernels_agree(k);
    }
}

fn kernels_agree(k: usize) {
    let n = 5;
    let weights_f: Vec<f32> = (0..n * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
        .collect();
    // Twenty-nine rows: a pair of groups of eight, a third group, then one of five padded
    // to eight.
    let m = 29;
    let lhs: Vec<f32> = (0..m * k)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
        .collect();
    for (format, weights) in &quantized_weights(&weights_f) {
        let format = *format;
        let mut dst = vec![0f32; m * n];
        matmul(format, (m, k, n), &lhs, weights, &mut dst).unwrap();
        let rows: Vec<QuantizedRow> = lhs.chunks_exact(k).map(quantize_row).collect();
        let portable = match format {
            WeightFormat::Q4_1 => dot_q4_1_portable,
            WeightFormat::Q5_0 => dot_q5_0_portable,
            WeightFormat::Q8_0 => dot_q8_0_portable,
        };
        let row_bytes = k / 32 * format.block_bytes();
        // A row computed in a group of eight, padded or not, in a pair of groups, in a
        // group of four (two to four rows, alone or after a group of eight) or as a lone
        // last row gives exactly what it gives alone: batched output equals unbatched
        // output.
        for batch in [2, 3, 4, 9, 11, 12, 13, 16, 17, 21, 24] {
            let mut some = vec![0f32; batch * n];
            matmul(format, (batch, k, n), &lhs[..batch * k], weights, &mut some).unwrap();
            assert_eq!(some, dst[..batch * n], "{format:?}, {batch} of {m} rows");
        }
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
        }
        for i in 0..m {
            for j in 0..n {
                let row = &weights[j * row_bytes..(j + 1) * row_bytes];
                // The portable kernels sum in the same order: the same bits.
                let simd = dst[i * n + j];
                let scalar = portable(row, &rows[i]);
                assert_eq!(
                    simd.to_bits(),
                    scalar.to_bits(),
                    "{format:?} simd {simd} scalar {scalar}"
                );
                // Exact math on the dequantized weights: only activation rounding remains.
                let products: Vec<f32> = (0..k)
                    .map(|t| lhs[i * k + t] * dequantize(format, row, t))
                    .collect();
                let exact: f32 = products.iter().sum();
                // Rounding errors scale with the terms, not with their (cancelling) sum.
                let magnitude: f32 = products.iter().map(|p| p.abs()).sum();
                assert!(
                    (simd - exact).abs() < 0.01 * magnitude.max(1.0),
                    "{format:?} {simd} vs {exact} (terms' magnitude {magnitude})"
                );
            }
        }
    }
}
