//! Readers of the two usual on-disk vector formats, for loading data sets (`tkms engine load`,
//! the benchmark):
//!
//! * `.fvecs` (the TEXMEX/ANN-benchmark format): per vector, a little-endian `i32` dimension
//!   followed by that many little-endian `f32`;
//! * `.npy` (NumPy format 1.0, 2.0 and 3.0): a 2-D array of `<f4` or `<f8` (converted to
//!   `f32`), C or Fortran order.
//!
//! Malformed files are [`Error::InvalidArgument`] with what is wrong; nothing panics on any
//! input.

use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// A dense row-major matrix of `rows × dim` `f32`s.
#[derive(Clone, Debug, PartialEq)]
pub struct Vectors {
    /// Vector dimension.
    pub dim: usize,
    /// `rows · dim` values, row after row.
    pub data: Vec<f32>,
}

impl Vectors {
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    /// True when there is no vector.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vector `i` (panics when out of range, like slice indexing).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Iterator over the vectors.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &[f32]> {
        self.data.chunks_exact(self.dim.max(1))
    }
}

fn bad(path: &Path, m: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{}: {m}", path.display()))
}

/// Reads a `.fvecs` or `.npy` file, chosen by extension.
pub fn read_vectors(path: &Path) -> Result<Vectors> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("fvecs") => read_fvecs(path),
        Some("npy") => read_npy(path),
        _ => Err(bad(path, "unknown vector file type: use .fvecs or .npy")),
    }
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    let mut buf = Vec::new();
    BufReader::new(f)
        .read_to_end(&mut buf)
        .map_err(|e| bad(path, e))?;
    Ok(buf)
}

/// Reads a `.fvecs` file.
pub fn read_fvecs(path: &Path) -> Result<Vectors> {
    parse_fvecs(&read_all(path)?).map_err(|m| bad(path, m))
}

fn parse_fvecs(bytes: &[u8]) -> std::result::Result<Vectors, String> {
    let mut data = Vec::new();
    let mut dim = None;
    let mut pos = 0;
    while pos < bytes.len() {
        let head: [u8; 4] = bytes
            .get(pos..pos + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| format!("truncated dimension at byte {pos}"))?;
        let d = i32::from_le_bytes(head);
        let d = usize::try_from(d)
            .ok()
            .filter(|d| *d > 0 && *d <= crate::MAX_DIMENSION)
            .ok_or_else(|| format!("bad dimension {d} at byte {pos}"))?;
        if *dim.get_or_insert(d) != d {
            return Err(format!(
                "vector at byte {pos} has dimension {d}, earlier ones {}",
                dim.unwrap_or(0)
            ));
        }
        let body = bytes
            .get(pos + 4..pos + 4 + 4 * d)
            .ok_or_else(|| format!("truncated vector at byte {pos}"))?;
        data.extend(
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        pos += 4 + 4 * d;
    }
    let dim = dim.ok_or("the file holds no vector")?;
    Ok(Vectors { dim, data })
}

/// Reads a `.npy` file holding a 2-D `<f4` or `<f8` array (C or Fortran order).
pub fn read_npy(path: &Path) -> Result<Vectors> {
    parse_npy(&read_all(path)?).map_err(|m| bad(path, m))
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    Some(rest)
}

fn parse_npy(bytes: &[u8]) -> std::result::Result<Vectors, String> {
    if bytes.get(..6) != Some(b"\x93NUMPY".as_slice()) {
        return Err("not a .npy file (magic missing)".into());
    }
    let major = *bytes.get(6).ok_or("truncated header")?;
    let (header_len, header_start) = match major {
        1 => (
            usize::from(u16::from_le_bytes(
                bytes
                    .get(8..10)
                    .and_then(|s| s.try_into().ok())
                    .ok_or("truncated header")?,
            )),
            10,
        ),
        2 | 3 => (
            u32::from_le_bytes(
                bytes
                    .get(8..12)
                    .and_then(|s| s.try_into().ok())
                    .ok_or("truncated header")?,
            ) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(header_start..header_start + header_len)
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = header_value(header, "descr").ok_or("header has no descr")?;
    let width = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        return Err(format!(
            "unsupported dtype {}: need little-endian float32 ('<f4') or float64 ('<f8')",
            descr.split(',').next().unwrap_or(descr)
        ));
    };
    let fortran = header_value(header, "fortran_order").ok_or("header has no fortran_order")?;
    let fortran = if fortran.starts_with("True") {
        true
    } else if fortran.starts_with("False") {
        false
    } else {
        return Err("malformed fortran_order".into());
    };
    let shape = header_value(header, "shape").ok_or("header has no shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape")?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("malformed shape entry {s:?}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let [rows, dim] = dims[..] else {
        return Err(format!("need a 2-D array, got shape {dims:?}"));
    };
    if dim == 0 || dim > crate::MAX_DIMENSION {
        return Err(format!("bad dimension {dim}"));
    }
    let n = rows.checked_mul(dim).ok_or("shape overflows")?;
    let body = &bytes[header_start + header_len..];
    if body.len() != n.checked_mul(width).ok_or("shape overflows")? {
        return Err(format!(
            "data is {} bytes, the shape {rows}×{dim} of {width}-byte floats needs {}",
            body.len(),
            n * width
        ));
    }
    let data: Vec<f32> = if width == 4 {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        #[allow(clippy::cast_possible_truncation)] // f64 → f32 is the documented conversion
        body.chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    if fortran {
        // Column-major: element (r, c) is at c · rows + r.
        let mut rowmajor = vec![0f32; n];
        for (i, x) in data.into_iter().enumerate() {
            rowmajor[(i % rows) * dim + i / rows] = x;
        }
        return Ok(Vectors {
            dim,
            data: rowmajor,
        });
    }
    Ok(Vectors { dim, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, body: &[u8], major: u8) -> Vec<u8> {
        npy_order(descr, "False", shape, body, major)
    }

    fn npy_order(descr: &str, order: &str, shape: &str, body: &[u8], major: u8) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
        while (header.len() + 11) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY".to_vec();
        out.push(major);
        out.push(0);
        if major == 1 {
            out.extend(u16::try_from(header.len()).unwrap().to_le_bytes());
        } else {
            out.extend(u32::try_from(header.len()).unwrap().to_le_bytes());
        }
        out.extend(header.as_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn npy_f4_f8_and_versions() {
        let v: Vec<f32> = vec![1.0, 2.5, -3.0, 4.0, 5.0, 6.0];
        let body: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        for major in [1, 2] {
            let got = parse_npy(&npy("<f4", "(3, 2)", &body, major)).unwrap();
            assert_eq!(got.dim, 2);
            assert_eq!(got.len(), 3);
            assert_eq!(got.data, v);
            assert_eq!(got.row(1), &[-3.0, 4.0]);
        }
        let body8: Vec<u8> = v.iter().flat_map(|x| f64::from(*x).to_le_bytes()).collect();
        assert_eq!(parse_npy(&npy("<f8", "(2, 3)", &body8, 1)).unwrap().data, v);
        // Fortran order: the same 3×2 matrix stored column by column.
        let cols: Vec<f32> = vec![1.0, -3.0, 5.0, 2.5, 4.0, 6.0];
        let body: Vec<u8> = cols.iter().flat_map(|x| x.to_le_bytes()).collect();
        let got = parse_npy(&npy_order("<f4", "True", "(3, 2)", &body, 1)).unwrap();
        assert_eq!(got.data, v);
        assert!(parse_npy(&npy_order("<f4", "Maybe", "(3, 2)", &body, 1)).is_err());
    }

    #[test]
    fn npy_errors() {
        let body = vec![0u8; 24];
        assert!(parse_npy(b"nope").is_err());
        assert!(parse_npy(&npy("<i4", "(3, 2)", &body, 1)).is_err());
        assert!(parse_npy(&npy("<f4", "(6,)", &body, 1)).is_err());
        assert!(parse_npy(&npy("<f4", "(4, 2)", &body, 1)).is_err());
        assert!(parse_npy(&npy("<f4", "(3, 0)", &body, 1)).is_err());
        assert!(parse_npy(&npy("<f4", "(99999999999999999999, 2)", &body, 1)).is_err());
        let good = npy("<f4", "(3, 2)", &body, 1);
        for n in 0..good.len() {
            assert!(parse_npy(&good[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn fvecs() {
        let mut bytes = Vec::new();
        for row in [[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]] {
            bytes.extend(3i32.to_le_bytes());
            bytes.extend(row.iter().flat_map(|x| x.to_le_bytes()));
        }
        let got = parse_fvecs(&bytes).unwrap();
        assert_eq!((got.dim, got.len()), (3, 2));
        assert_eq!(got.row(1), &[4.0, 5.0, 6.0]);
        for n in 1..bytes.len() {
            if n != 16 {
                assert!(parse_fvecs(&bytes[..n]).is_err(), "prefix {n}");
            }
        }
        assert!(parse_fvecs(&[]).is_err());
        let mut mixed = bytes.clone();
        mixed.extend(2i32.to_le_bytes());
        mixed.extend([0u8; 8]);
        assert!(parse_fvecs(&mixed).is_err());
        assert!(parse_fvecs(&(-1i32).to_le_bytes()).is_err());
    }
}
