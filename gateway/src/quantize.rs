//! Compact vectors: int8, uint8, binary and ubinary encodings of unit-length embeddings
//! (Cohere's `embedding_types`), and base64 of the float vector.
//!
//! The scheme, the same for queries and documents so that dot products stay comparable:
//!
//! * **int8**: each component `x` of a `d`-wide vector is scaled by `127 * sqrt(d) / 4` (the
//!   range `[-4/sqrt(d), 4/sqrt(d)]`, four standard deviations of a component of a random
//!   unit vector, maps onto `[-127, 127]`), rounded half away from zero and clamped to
//!   `[-127, 127]`. `-128` is never produced, so the scale is symmetric.
//! * **uint8**: the int8 value plus 128 (`[1, 255]`).
//! * **ubinary**: one bit per component, 1 when the component is above 0, packed 8 to a
//!   byte with the first component in the most significant bit (`numpy.packbits`); a width
//!   that is not a multiple of 8 is padded with zero bits.
//! * **binary**: the ubinary byte minus 128, as a signed byte (what Cohere and
//!   sentence-transformers send).
//!
//! `d` is the width of the vector as answered (after `dimensions`), so a Matryoshka-cut
//! vector, normalized again, gets the scale of its own width.

use base64::Engine;

/// How far, in standard deviations of a component of a random unit vector (`1/sqrt(d)`),
/// the int8 range reaches.
pub const INT8_RANGE_SIGMAS: f32 = 4.0;

/// The int8 encoding of `vector` (see the module documentation).
pub fn int8(vector: &[f32]) -> Vec<i8> {
    let scale = 127.0 * (vector.len() as f32).sqrt() / INT8_RANGE_SIGMAS;
    vector
        .iter()
        // `f32::round` rounds half away from zero; `as` saturates (NaN becomes 0).
        .map(|&x| (x * scale).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

/// The uint8 encoding of `vector`: the int8 value plus 128.
pub fn uint8(vector: &[f32]) -> Vec<u8> {
    int8(vector)
        .into_iter()
        .map(|q| (i16::from(q) + 128) as u8)
        .collect()
}

/// The ubinary encoding of `vector`: sign bits, most significant first, zero-padded.
pub fn ubinary(vector: &[f32]) -> Vec<u8> {
    vector
        .chunks(8)
        .map(|chunk| {
            chunk.iter().enumerate().fold(0u8, |byte, (bit, &x)| {
                byte | (u8::from(x > 0.0) << (7 - bit))
            })
        })
        .collect()
}

/// The binary encoding of `vector`: each ubinary byte minus 128.
pub fn binary(vector: &[f32]) -> Vec<i8> {
    ubinary(vector)
        .into_iter()
        .map(|byte| (i16::from(byte) - 128) as i8)
        .collect()
}

/// The little-endian f32 bytes of `vector`, base64-encoded (OpenAI's and Cohere's `base64`).
pub fn base64_f32(vector: &[f32]) -> String {
    let bytes = common::wire::f32_le_bytes([vector]);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_scales_by_the_width_rounds_half_away_and_clamps() {
        // d = 16: scale 127 * 4 / 4 = 127.
        let mut vector = vec![0.0; 16];
        vector[..6].copy_from_slice(&[0.5, -0.5, 1.0, -1.0, 0.1, f32::NAN]);
        let q = int8(&vector);
        assert_eq!(&q[..6], &[64, -64, 127, -127, 13, 0]);
        assert_eq!(uint8(&vector)[..6], [192, 64, 255, 1, 141, 128]);
    }

    #[test]
    fn binary_packs_sign_bits_most_significant_first() {
        let vector = [1.0, -1.0, 0.0, 0.5, -0.1, 0.2, 0.3, -0.4, 0.9, -0.9];
        // 1001 0110, then 10 padded: 1000 0000.
        assert_eq!(ubinary(&vector), [0b1001_0110, 0b1000_0000]);
        // 150 - 128 and 128 - 128.
        assert_eq!(binary(&vector), [22, 0]);
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64_f32(&[1.0, -2.5]))
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }
}
