//! NumPy `.npy` files of little-endian float32 in C order: what `predict`
//! reads (a preprocessed N×3×H×W batch) and writes (`--logits`).

use crate::error::{Error, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A float32 array: its shape and its values in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: format!("not a float32 .npy array: {why}"),
    }
}

/// Reads a float32 `.npy` file.
pub fn read(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "no .npy magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(path, format!("version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad(path, "a truncated header"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr").ok_or_else(|| bad(path, "no descr"))?;
    if !(descr.starts_with("'<f4'") || descr.starts_with("'float32'")) {
        return Err(bad(
            path,
            format!("dtype {}", descr.split(',').next().unwrap_or(descr)),
        ));
    }
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad(path, "Fortran order; save it C-contiguous"));
    }
    let shape_text = field("shape").ok_or_else(|| bad(path, "no shape"))?;
    let inside = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad(path, "an unreadable shape"))?;
    let shape = inside
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(path, format!("shape entry {s}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let body = &bytes[start + header_len..];
    let count = shape
        .iter()
        .try_fold(4usize, |n, &d| n.checked_mul(d))
        .unwrap_or(usize::MAX);
    if body.len() != count {
        return Err(bad(
            path,
            format!("{} bytes of data for shape {shape:?}", body.len()),
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Array { shape, data })
}

/// Writes a float32 `.npy` file (format 1.0), through a temporary file.
pub fn write(path: &Path, array: &Array) -> Result<()> {
    crate::output::Output::create(path, "writing")?.commit(&encode(array))
}

/// A float32 array as the bytes of a `.npy` file (format 1.0).
pub fn encode(array: &Array) -> Vec<u8> {
    let dims: Vec<String> = array.shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic, version, length, header and its newline, padded to 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * array.data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(array.data.iter().flat_map(|v| v.to_le_bytes()));
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_numpys_own_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let array = Array {
            shape: vec![2, 3],
            data: vec![1.0, -2.5, 3.0, 0.0, 1e-7, f32::MAX],
        };
        write(&path, &array).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            (10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64,
            0
        );
        assert_eq!(read(&path).unwrap(), array);
        // A header exactly as numpy 1.x writes it for np.zeros((1,), 'f4').
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }";
        let mut numpy = b"\x93NUMPY\x01\x00".to_vec();
        let padded = format!("{header:<117}\n");
        numpy.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        numpy.extend_from_slice(padded.as_bytes());
        numpy.extend_from_slice(&0.5f32.to_le_bytes());
        std::fs::write(&path, numpy).unwrap();
        assert_eq!(
            read(&path).unwrap(),
            Array {
                shape: vec![1],
                data: vec![0.5]
            }
        );
    }

    #[test]
    fn other_dtypes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npy");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let header = format!(
            "{:<117}\n",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }"
        );
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0; 8]);
        std::fs::write(&path, bytes).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("d.npy") && e.contains("'<f8'"), "{e}");
    }
}
