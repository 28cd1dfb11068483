//! The host side of sampling on the GPU: each row's `DeviceSampling` packed into the eight
//! 32-bit words of the kernel's `SampleParams` (`kernels/llama.cu`). Tested without a GPU.

use crate::sampling::DeviceSampling;

/// 32-bit words per row.
pub const WORDS_PER_ROW: usize = 8;

/// The kernel's parameter rows, in order.
pub fn pack(rows: &[DeviceSampling]) -> Vec<u32> {
    let mut words = Vec::with_capacity(rows.len() * WORDS_PER_ROW);
    for row in rows {
        words.extend([
            row.temperature.max(0.0).to_bits(),
            row.top_p.clamp(f32::MIN_POSITIVE, 1.0).to_bits(),
            row.min_p.clamp(0.0, 1.0).to_bits(),
            u32::try_from(row.top_k).unwrap_or(u32::MAX),
            row.seed as u32,
            (row.seed >> 32) as u32,
            row.step,
            0,
        ]);
    }
    words
}

/// Parameters for a row whose token nobody wants: greedy, the cheapest.
pub const GREEDY: DeviceSampling = DeviceSampling {
    temperature: 0.0,
    top_k: 0,
    top_p: 1.0,
    min_p: 0.0,
    seed: 0,
    step: 0,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_each_row_into_the_kernels_struct_layout() {
        let rows = [
            DeviceSampling {
                temperature: 0.7,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.05,
                seed: 0x0123_4567_89ab_cdef,
                step: 12,
            },
            DeviceSampling {
                top_k: usize::MAX,
                top_p: 0.0,
                min_p: 2.0,
                ..GREEDY
            },
        ];
        let words = pack(&rows);
        assert_eq!(words.len(), 2 * WORDS_PER_ROW);
        assert_eq!(
            &words[..8],
            &[
                0.7f32.to_bits(),
                0.9f32.to_bits(),
                0.05f32.to_bits(),
                40,
                0x89ab_cdef,
                0x0123_4567,
                12,
                0
            ]
        );
        // Out-of-range values are clamped to what the kernel handles, never wrapped.
        assert_eq!(words[8], 0f32.to_bits());
        assert_eq!(f32::from_bits(words[9]), f32::MIN_POSITIVE);
        assert_eq!(f32::from_bits(words[10]), 1.0);
        assert_eq!(words[11], u32::MAX);
    }
}
