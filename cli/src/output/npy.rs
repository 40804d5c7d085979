//! NumPy `.npy` files (format version 1.0): a fixed-size header describing a little-endian
//! float32 C-order matrix, then the rows.
//!
//! The header is always [`HEADER_LEN`] bytes, padded with spaces, so it can be rewritten in
//! place with the new row count after every batch: at every checkpoint the file is a
//! complete, valid `.npy` of the rows embedded so far.

/// Bytes before the first row (a multiple of 64, as the format asks; room for any `u64`
/// shape).
pub const HEADER_LEN: usize = 128;

/// The 6-byte magic string and version 1.0.
const MAGIC: &[u8; 8] = b"\x93NUMPY\x01\x00";

/// The header of a `rows x dims` float32 matrix.
pub fn header(rows: u64, dims: u64) -> [u8; HEADER_LEN] {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dims}), }}");
    let mut header = [b' '; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    let dict_len = (HEADER_LEN - 10) as u16;
    header[8..10].copy_from_slice(&dict_len.to_le_bytes());
    // At most 97 bytes with two 20-digit numbers: always fits in the 118 available.
    header[10..10 + dict.len()].copy_from_slice(dict.as_bytes());
    header[HEADER_LEN - 1] = b'\n';
    header
}

/// The shape `(rows, dims)` of a float32 C-order `.npy` header (version 1.0), and the
/// offset of its first row. Only the layout this module writes is understood.
pub fn parse_header(bytes: &[u8]) -> Result<(u64, u64, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" || bytes[6] != 1 {
        return Err("not a version 1 .npy file".into());
    }
    let dict_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let dict = bytes
        .get(10..10 + dict_len)
        .and_then(|d| std::str::from_utf8(d).ok())
        .ok_or("truncated .npy header")?;
    if !dict.contains("'descr': '<f4'") || !dict.contains("'fortran_order': False") {
        return Err(format!(
            "not a little-endian float32 C-order matrix: {}",
            dict.trim()
        ));
    }
    let shape = dict
        .split_once("'shape': (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(shape, _)| shape)
        .ok_or("no shape in the .npy header")?;
    let numbers: Vec<u64> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape ({shape})")))
        .collect::<Result<_, _>>()?;
    match numbers[..] {
        [rows, dims] => Ok((rows, dims, 10 + dict_len)),
        _ => Err(format!("expected a 2-D shape, found ({shape})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_to_the_fixed_length_and_parses_back() {
        for (rows, dims) in [(0, 32), (17, 1024), (u64::MAX, u64::MAX)] {
            let bytes = header(rows, dims);
            assert_eq!(bytes.len() % 64, 0);
            assert_eq!(bytes[HEADER_LEN - 1], b'\n');
            assert_eq!(parse_header(&bytes).unwrap(), (rows, dims, HEADER_LEN));
        }
        let dict = b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
        let bytes = header(3, 4);
        assert_eq!(&bytes[10..10 + dict.len()], dict.as_slice());
        assert!(
            bytes[10 + dict.len()..HEADER_LEN - 1]
                .iter()
                .all(|&b| b == b' ')
        );
    }

    #[test]
    fn other_files_are_refused() {
        assert!(parse_header(b"hello").is_err());
        let mut bytes = header(1, 2);
        bytes[10..26].copy_from_slice(b"{'descr': '<f8',");
        assert!(parse_header(&bytes).unwrap_err().contains("float32"));
    }
}
