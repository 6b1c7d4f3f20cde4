// NPY reader (format 1.0, 2.0 and 3.0). Layout: "\x93NUMPY", major, minor, header length
// (u16 LE for 1.0, u32 LE for 2.0/3.0), a Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } (latin-1, or UTF-8 for 3.0)
// padded to a 64-byte boundary, then the raw data. The header is parsed as data, never evaluated.
use std::fmt;

use crate::error::{FixtureError, Result};

/// Largest array accepted, in bytes (a hostile header must not make us allocate more).
pub const MAX_NPY_BYTES: usize = 1 << 31;
/// Largest header accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 1 << 16;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Float,
    Int,
    UInt,
    Bool,
    /// bf16 stored as its `<u2` bit pattern; only the manifest can say so (dtype "bfloat16").
    BFloat16,
}

/// An element type: kind, size in bytes, byte order (irrelevant for 1-byte types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dtype {
    pub kind: Kind,
    pub size: usize,
    pub order: ByteOrder,
}

impl Dtype {
    pub const F4: Dtype = Dtype { kind: Kind::Float, size: 4, order: ByteOrder::Little };
    pub const I4: Dtype = Dtype { kind: Kind::Int, size: 4, order: ByteOrder::Little };
    pub const U1: Dtype = Dtype { kind: Kind::UInt, size: 1, order: ByteOrder::Little };

    /// Parses a numpy descr such as `<f4`, `>i2`, `|u1`, `=f8`, or the manifest's `bfloat16`.
    /// `None` for anything else (complex, strings, datetimes, objects, odd sizes).
    pub fn parse(descr: &str) -> Option<Dtype> {
        if descr == "bfloat16" {
            return Some(Dtype { kind: Kind::BFloat16, size: 2, order: ByteOrder::Little });
        }
        let b = descr.as_bytes();
        if b.len() != 3 {
            return None;
        }
        let order = match b[0] {
            b'<' | b'|' => ByteOrder::Little,
            b'>' => ByteOrder::Big,
            b'=' if cfg!(target_endian = "little") => ByteOrder::Little,
            b'=' => ByteOrder::Big,
            _ => return None,
        };
        let size = (b[2] as char).to_digit(10)? as usize;
        let kind = match (b[1], size) {
            (b'f', 2 | 4 | 8) => Kind::Float,
            (b'i', 1 | 2 | 4 | 8) => Kind::Int,
            (b'u', 1 | 2 | 4 | 8) => Kind::UInt,
            (b'b', 1) => Kind::Bool,
            _ => return None,
        };
        // numpy writes '|' for 1-byte types and never for wider ones.
        if b[0] == b'|' && size != 1 {
            return None;
        }
        // Byte order means nothing for one byte: normalise so that '|u1' == '<u1'.
        let order = if size == 1 { ByteOrder::Little } else { order };
        Some(Dtype { kind, size, order })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == Kind::BFloat16 {
            return f.write_str("bfloat16");
        }
        let order = match (self.size, self.order) {
            (1, _) => '|',
            (_, ByteOrder::Little) => '<',
            (_, ByteOrder::Big) => '>',
        };
        let kind = match self.kind {
            Kind::Float => 'f',
            Kind::Int => 'i',
            Kind::UInt => 'u',
            Kind::Bool => 'b',
            Kind::BFloat16 => unreachable!(),
        };
        write!(f, "{}{}{}", order, kind, self.size)
    }
}

/// A decoded array: dtype, shape, and the data in C (row-major) order, still in the file's
/// byte order. Convert with [`Array::to_f32`], [`Array::to_f64`] or [`Array::to_i64`].
#[derive(Clone, Debug)]
pub struct Array {
    /// Where the array came from, for error messages (`<file>:<entry>`).
    pub source_name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    data: Vec<u8>,
}

/// What the header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub version: (u8, u8),
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub fortran_order: bool,
    /// Byte offset of the data.
    pub data_offset: usize,
    /// Bytes of data the header declares.
    pub data_bytes: usize,
}

/// Parses the preamble and header of an NPY file. `source_name` names it in errors.
pub fn parse_header(bytes: &[u8], source_name: &str) -> Result<NpyHeader> {
    let fail = |message: String| FixtureError::Npy { source_name: source_name.to_string(), message };
    if bytes.len() < 10 {
        return Err(fail(format!("truncated: {} bytes, shorter than an NPY preamble", bytes.len())));
    }
    if &bytes[..6] != MAGIC {
        return Err(fail("bad magic: not an NPY file".to_string()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(fail("truncated header length".to_string()));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        _ => return Err(fail(format!("unsupported NPY version {}.{} (expected 1.0, 2.0 or 3.0)", major, minor))),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(fail(format!("header of {} bytes is larger than {} bytes", header_len, MAX_HEADER_BYTES)));
    }
    if bytes.len() < start + header_len {
        return Err(fail(format!("truncated header: declares {} bytes, {} present", header_len, bytes.len() - start)));
    }
    let raw = &bytes[start..start + header_len];
    // 1.0/2.0 headers are latin-1; 3.0 headers are UTF-8.
    let text: String = if major == 3 {
        std::str::from_utf8(raw).map_err(|_| fail("version 3.0 header is not valid UTF-8".to_string()))?.to_string()
    } else {
        raw.iter().map(|&c| c as char).collect()
    };
    let dict = parse_dict(&text).map_err(fail)?;
    let descr = match dict.get("descr") {
        Some(Literal::Str(s)) => s.clone(),
        Some(Literal::List) => {
            return Err(FixtureError::UnsupportedDtype { source_name: source_name.to_string(), dtype: "a structured dtype".to_string() })
        }
        _ => return Err(fail("header 'descr' must be a string".to_string())),
    };
    let dtype = match Dtype::parse(&descr) {
        Some(d) if d.kind != Kind::BFloat16 => d,
        _ => return Err(FixtureError::UnsupportedDtype { source_name: source_name.to_string(), dtype: descr }),
    };
    let fortran_order = match dict.get("fortran_order") {
        Some(Literal::Bool(b)) => *b,
        _ => return Err(fail("header 'fortran_order' must be True or False".to_string())),
    };
    let shape = match dict.get("shape") {
        Some(Literal::Tuple(t)) => t.clone(),
        _ => return Err(fail("header 'shape' must be a tuple of integers".to_string())),
    };
    let too_big = || fail(format!("declared shape {:?} of {} needs more than the {}-byte limit", shape, dtype, MAX_NPY_BYTES));
    let mut count: usize = 1;
    for &d in &shape {
        count = count.checked_mul(d).ok_or_else(too_big)?;
    }
    let data_bytes = count.checked_mul(dtype.size).ok_or_else(too_big)?;
    if data_bytes > MAX_NPY_BYTES {
        return Err(too_big());
    }
    Ok(NpyHeader { version: (major, minor), dtype, shape, fortran_order, data_offset: start + header_len, data_bytes })
}

/// Decodes a whole NPY file. Fortran-ordered arrays are transposed to C order.
pub fn decode(bytes: &[u8], source_name: &str) -> Result<Array> {
    let h = parse_header(bytes, source_name)?;
    let have = bytes.len() - h.data_offset;
    if have != h.data_bytes {
        return Err(FixtureError::Npy {
            source_name: source_name.to_string(),
            message: format!(
                "shape {:?} of {} needs {} data bytes, file has {}{}",
                h.shape,
                h.dtype,
                h.data_bytes,
                have,
                if have < h.data_bytes { " (truncated)" } else { "" }
            ),
        });
    }
    let raw = &bytes[h.data_offset..];
    let data = if h.fortran_order && h.shape.len() > 1 { fortran_to_c(raw, &h.shape, h.dtype.size) } else { raw.to_vec() };
    Ok(Array { source_name: source_name.to_string(), dtype: h.dtype, shape: h.shape, data })
}

/// Element (i0, i1, ...) sits at sum(i_k · prod(shape[..k])) in Fortran order.
fn fortran_to_c(src: &[u8], shape: &[usize], item: usize) -> Vec<u8> {
    let n = shape.len();
    let mut f_stride = vec![1usize; n];
    for k in 1..n {
        f_stride[k] = f_stride[k - 1] * shape[k - 1];
    }
    let count = src.len() / item;
    let mut dst = Vec::with_capacity(src.len());
    let mut idx = vec![0usize; n];
    for _ in 0..count {
        let f: usize = idx.iter().zip(&f_stride).map(|(i, s)| i * s).sum();
        dst.extend_from_slice(&src[f * item..(f + 1) * item]);
        for k in (0..n).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    dst
}

impl Array {
    /// Builds an array from C-order bytes in `dtype`'s byte order (checked against the shape).
    pub fn from_bytes(source_name: &str, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Result<Array> {
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if count.and_then(|c| c.checked_mul(dtype.size)) != Some(data.len()) {
            return Err(FixtureError::Npy {
                source_name: source_name.to_string(),
                message: format!("shape {:?} of {} does not match {} data bytes", shape, dtype, data.len()),
            });
        }
        Ok(Array { source_name: source_name.to_string(), dtype, shape, data })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The raw data, C order, in the dtype's byte order.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Reinterprets `<u2` data as bf16 bit patterns (the manifest's "bfloat16").
    pub(crate) fn mark_bfloat16(&mut self) {
        self.dtype = Dtype { kind: Kind::BFloat16, size: 2, order: self.dtype.order };
    }

    fn word(&self, i: usize) -> u64 {
        let s = self.dtype.size;
        let mut b = [0u8; 8];
        let src = &self.data[i * s..(i + 1) * s];
        match self.dtype.order {
            ByteOrder::Little => b[..s].copy_from_slice(src),
            ByteOrder::Big => {
                for (k, &x) in src.iter().rev().enumerate() {
                    b[k] = x;
                }
            }
        }
        u64::from_le_bytes(b)
    }

    /// Element i as f64 (exact for every kind except 8-byte integers beyond 2^53, refused).
    fn value(&self, i: usize) -> Result<f64> {
        let w = self.word(i);
        let v = match (self.dtype.kind, self.dtype.size) {
            (Kind::Float, 2) => f16_to_f64(w as u16),
            (Kind::Float, 4) => f32::from_bits(w as u32) as f64,
            (Kind::Float, 8) => f64::from_bits(w),
            (Kind::BFloat16, 2) => f32::from_bits((w as u32) << 16) as f64,
            (Kind::Int, s) => {
                let shift = 64 - 8 * s as u32;
                let x = ((w << shift) as i64) >> shift;
                if x.unsigned_abs() > 1 << 53 {
                    return Err(self.conversion(i, format!("integer {} is beyond f64's exact range", x)));
                }
                x as f64
            }
            (Kind::UInt, _) | (Kind::Bool, _) => {
                if w > 1 << 53 {
                    return Err(self.conversion(i, format!("integer {} is beyond f64's exact range", w)));
                }
                w as f64
            }
            _ => unreachable!("Dtype::parse admits no other size"),
        };
        Ok(v)
    }

    fn conversion(&self, i: usize, message: String) -> FixtureError {
        FixtureError::Conversion { source_name: self.source_name.clone(), message: format!("element {}: {}", i, message) }
    }

    /// The values as f64, C order.
    pub fn to_f64(&self) -> Result<Vec<f64>> {
        (0..self.len()).map(|i| self.value(i)).collect()
    }

    /// The values as f32, C order. Floats of 2 or 4 bytes, bf16, bools and integers up to
    /// 2^24 in magnitude convert exactly; f64 rounds to nearest. Refused (an error, not a
    /// silent change): integers beyond ±2^24 and finite f64 values beyond f32's range.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.len());
        for i in 0..self.len() {
            let v = self.value(i)?;
            match self.dtype.kind {
                Kind::Int | Kind::UInt if v.abs() > (1u32 << 24) as f64 => {
                    return Err(self.conversion(i, format!("integer {} is not exactly representable as f32", v)))
                }
                Kind::Float if v.is_finite() && (v as f32).is_infinite() => {
                    return Err(self.conversion(i, format!("{} overflows f32", v)))
                }
                _ => {}
            }
            out.push(v as f32);
        }
        Ok(out)
    }

    /// The values as i64, for integer and bool arrays (`chunk_sizes`, masks); floats refused.
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        if !matches!(self.dtype.kind, Kind::Int | Kind::UInt | Kind::Bool) {
            return Err(FixtureError::Conversion {
                source_name: self.source_name.clone(),
                message: format!("{} is not an integer dtype", self.dtype),
            });
        }
        (0..self.len())
            .map(|i| {
                let w = self.word(i);
                match self.dtype.kind {
                    Kind::Int => {
                        let shift = 64 - 8 * self.dtype.size as u32;
                        Ok(((w << shift) as i64) >> shift)
                    }
                    _ => i64::try_from(w).map_err(|_| self.conversion(i, format!("{} overflows i64", w))),
                }
            })
            .collect()
    }

    /// `(data as f32, shape)`, the pair tensor libraries take (see the crate's README).
    pub fn to_f32_with_shape(&self) -> Result<(Vec<f32>, Vec<usize>)> {
        Ok((self.to_f32()?, self.shape.clone()))
    }
}

/// IEEE half to f64 (exact): subnormals, infinities and NaN included.
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
    /// A list (numpy writes structured dtypes' descr as one); recognised only to refuse it.
    List,
}

/// The header's dict literal: string keys; values are strings, True/False, int tuples.
fn parse_dict(text: &str) -> std::result::Result<std::collections::BTreeMap<String, Literal>, String> {
    let b = text.as_bytes();
    let mut i = 0usize;
    let ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] as char).is_ascii_whitespace() {
            *i += 1;
        }
    };
    let at = |i: usize| if i < b.len() { format!("{:?}", b[i] as char) } else { "end".to_string() };
    let string = |i: &mut usize| -> std::result::Result<String, String> {
        ws(i);
        let q = *b.get(*i).ok_or("malformed header: expected a string, got end")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("malformed header at byte {}: expected a string", *i));
        }
        let end = b[*i + 1..].iter().position(|&c| c == q).ok_or("malformed header: unterminated string")? + *i + 1;
        let s = text[*i + 1..end].to_string();
        *i = end + 1;
        Ok(s)
    };
    let mut dict = std::collections::BTreeMap::new();
    ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return Err(format!("malformed header at byte {}: expected '{{', got {}", i, at(i)));
    }
    i += 1;
    loop {
        ws(&mut i);
        if b.get(i) == Some(&b'}') {
            break;
        }
        let key = string(&mut i)?;
        ws(&mut i);
        if b.get(i) != Some(&b':') {
            return Err(format!("malformed header at byte {}: expected ':', got {}", i, at(i)));
        }
        i += 1;
        ws(&mut i);
        let value = match b.get(i) {
            Some(b'\'') | Some(b'"') => Literal::Str(string(&mut i)?),
            Some(b'T') if text[i..].starts_with("True") => {
                i += 4;
                Literal::Bool(true)
            }
            Some(b'F') if text[i..].starts_with("False") => {
                i += 5;
                Literal::Bool(false)
            }
            Some(b'[') => Literal::List,
            Some(b'(') => {
                i += 1;
                let mut dims = Vec::new();
                loop {
                    ws(&mut i);
                    if b.get(i) == Some(&b')') {
                        break;
                    }
                    let start = i;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    if start == i {
                        return Err(format!("malformed header at byte {}: shape entries must be non-negative integers", i));
                    }
                    let d: usize = text[start..i].parse().map_err(|_| format!("shape entry {} is too large", &text[start..i]))?;
                    dims.push(d);
                    if b.get(i) == Some(&b'L') {
                        i += 1; // Python 2 long literal
                    }
                    ws(&mut i);
                    match b.get(i) {
                        Some(b',') => i += 1,
                        Some(b')') => {}
                        _ => return Err(format!("malformed header at byte {}: expected ',' or ')' in shape", i)),
                    }
                }
                i += 1;
                Literal::Tuple(dims)
            }
            _ => return Err(format!("malformed header at byte {}: unsupported value (only strings, True/False and integer tuples)", i)),
        };
        if value == Literal::List {
            // Skip to the matching ']' so the rest of the dict still parses.
            let mut depth = 0i32;
            while i < b.len() {
                match b[i] {
                    b'[' => depth += 1,
                    b']' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        if dict.insert(key.clone(), value).is_some() {
            return Err(format!("duplicate header key '{}'", key));
        }
        ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            _ => return Err(format!("malformed header at byte {}: expected ',' or '}}'", i)),
        }
    }
    i += 1;
    ws(&mut i);
    if i != b.len() {
        return Err("malformed header: trailing characters after the dict".to_string());
    }
    for key in ["descr", "fortran_order", "shape"] {
        if !dict.contains_key(key) {
            return Err(format!("header lacks '{}'", key));
        }
    }
    Ok(dict)
}

/// An NPY file of `shape` and `dtype` holding `data` (C order, bytes in the dtype's order):
/// for tests and for writing fixtures from Rust. `version` is 1, 2 or 3.
pub fn encode(dtype: Dtype, shape: &[usize], data: &[u8], version: u8, fortran_order: bool) -> Vec<u8> {
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': {}, 'shape': {}, }}",
        dtype,
        if fortran_order { "True" } else { "False" },
        dims
    );
    let len_bytes = if version == 1 { 2 } else { 4 };
    let unpadded = 6 + 2 + len_bytes + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.push(version);
    out.push(0);
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An NPY 1.0 file whose header is `dict` (plus '\n'), with no data.
    fn raw(dict: &str) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(dict.len() as u16 + 1).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.push(b'\n');
        out
    }

    fn f32_bytes(v: &[f32], order: ByteOrder) -> Vec<u8> {
        v.iter()
            .flat_map(|x| match order {
                ByteOrder::Little => x.to_le_bytes(),
                ByteOrder::Big => x.to_be_bytes(),
            })
            .collect()
    }

    #[test]
    fn reads_versions_1_2_3() {
        let data = f32_bytes(&[1.0, -2.5, 3.25, 0.0, 5.0, 6.0], ByteOrder::Little);
        for version in [1u8, 2, 3] {
            let file = encode(Dtype::F4, &[2, 3], &data, version, false);
            assert_eq!(file.len() % 64, data.len() % 64, "v{}: header padded to 64 bytes", version);
            let a = decode(&file, "t.npy").unwrap();
            assert_eq!(a.shape, vec![2, 3]);
            assert_eq!(a.to_f32().unwrap(), vec![1.0, -2.5, 3.25, 0.0, 5.0, 6.0], "v{}", version);
        }
    }

    #[test]
    fn big_endian_and_fortran_order() {
        // Fortran order stores columns first: [[1,2,3],[4,5,6]] is 1,4,2,5,3,6.
        let be = Dtype { kind: Kind::Float, size: 4, order: ByteOrder::Big };
        let file = encode(be, &[2, 3], &f32_bytes(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0], ByteOrder::Big), 1, true);
        let a = decode(&file, "t.npy").unwrap();
        assert_eq!(a.dtype.to_string(), ">f4");
        assert_eq!(a.to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn converts_f8_f2_bf16_and_integers() {
        let f8 = Dtype::parse("<f8").unwrap();
        let file = encode(f8, &[2], &[0.1f64.to_le_bytes(), (-3.0f64).to_le_bytes()].concat(), 1, false);
        assert_eq!(decode(&file, "t").unwrap().to_f32().unwrap(), vec![0.1f32, -3.0]);
        let too_big = encode(f8, &[1], &1e300f64.to_le_bytes(), 1, false);
        let e = decode(&too_big, "t").unwrap().to_f32().unwrap_err();
        assert!(e.to_string().contains("overflows f32"), "{}", e);

        // f16: 1.0 = 0x3c00, -2.0 = 0xc000, smallest subnormal 0x0001 = 2^-24, inf 0x7c00.
        let f2 = Dtype::parse(">f2").unwrap();
        let half: Vec<u8> = [0x3c00u16, 0xc000, 0x0001, 0x7c00].iter().flat_map(|h| h.to_be_bytes()).collect();
        let v = decode(&encode(f2, &[4], &half, 1, false), "t").unwrap().to_f32().unwrap();
        assert_eq!(v, vec![1.0, -2.0, 2f32.powi(-24), f32::INFINITY]);

        let mut bf = Array::from_bytes("t", Dtype::parse("<u2").unwrap(), vec![2], [0x3f80u16, 0xc040].iter().flat_map(|h| h.to_le_bytes()).collect()).unwrap();
        bf.mark_bfloat16();
        assert_eq!(bf.to_f32().unwrap(), vec![1.0, -3.0]);

        let i2 = Dtype::parse(">i2").unwrap();
        let a = decode(&encode(i2, &[3], &[(-7i16).to_be_bytes(), 300i16.to_be_bytes(), 0i16.to_be_bytes()].concat(), 1, false), "t").unwrap();
        assert_eq!(a.to_i64().unwrap(), vec![-7, 300, 0]);
        assert_eq!(a.to_f32().unwrap(), vec![-7.0, 300.0, 0.0]);

        let i4 = Dtype::I4;
        let a = decode(&encode(i4, &[1], &(1i32 << 25).to_le_bytes(), 1, false), "t").unwrap();
        let e = a.to_f32().unwrap_err();
        assert!(e.to_string().contains("not exactly representable as f32"), "{}", e);
        assert_eq!(a.to_i64().unwrap(), vec![1 << 25]);

        let f = decode(&encode(Dtype::F4, &[1], &1f32.to_le_bytes(), 1, false), "t").unwrap();
        assert!(f.to_i64().unwrap_err().to_string().contains("not an integer dtype"));
    }

    #[test]
    fn one_byte_types_ignore_byte_order() {
        assert_eq!(Dtype::parse("|u1"), Dtype::parse("<u1"));
        assert_eq!(Dtype::parse("|u1").unwrap().to_string(), "|u1");
        assert_eq!(Dtype::parse("|b1").unwrap().kind, Kind::Bool);
        assert_eq!(Dtype::parse("|f4"), None);
    }

    #[test]
    fn refuses_unsupported_dtypes() {
        for descr in ["<c8", "<U5", "|O", "<M8[ns]", "<f16", "|S3", "<f3"] {
            let mut file = encode(Dtype::F4, &[0], &[], 1, false);
            // Same header length: swap in the descr and pad the dict's trailing spaces.
            let text = String::from_utf8_lossy(&file[10..]).replace("'<f4'", &format!("'{}'", descr));
            let len = u16::from_le_bytes([file[8], file[9]]) as usize;
            let mut header: Vec<u8> = text.trim_end().as_bytes().to_vec();
            header.resize(len - 1, b' ');
            header.push(b'\n');
            file.truncate(10);
            file.extend_from_slice(&header);
            match decode(&file, "t.npy") {
                Err(FixtureError::UnsupportedDtype { dtype, .. }) => assert_eq!(dtype, descr),
                other => panic!("{}: expected UnsupportedDtype, got {:?}", descr, other),
            }
        }
        let structured = raw("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }");
        let e = parse_header(&structured, "s.npy").unwrap_err();
        assert!(matches!(e, FixtureError::UnsupportedDtype { .. }), "{:?}", e);
    }

    #[test]
    fn refuses_malformed_files() {
        let good = encode(Dtype::F4, &[2], &f32_bytes(&[1.0, 2.0], ByteOrder::Little), 1, false);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "(truncated)"),
            ([good.clone(), vec![0]].concat(), "file has 9"),
            (b"NOTNUMPY\x01\x00".to_vec(), "bad magic"),
            ([&good[..6], &[4u8, 0], &good[8..]].concat(), "unsupported NPY version 4.0"),
            (good[..5].to_vec(), "truncated: 5 bytes"),
            (good[..40].to_vec(), "truncated header"),
            (raw("{'descr': '<f4'}"), "lacks 'fortran_order'"),
            (raw("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }"), "non-negative integers"),
            (raw("{'descr': '<f4', 'descr': '<f4', 'shape': (1,)}"), "duplicate header key"),
            (raw("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999), }"), "limit"),
            (raw("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } junk"), "trailing characters"),
            (raw("{'descr': '<f4', 'fortran_order': None, 'shape': (1,), }   "), "unsupported value"),
        ];
        for (bytes, expect) in cases {
            let e = decode(&bytes, "bad.npy").unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with("bad.npy: ") && msg.contains(expect), "expected {:?} in {:?}", expect, msg);
        }
    }

    #[test]
    fn accepts_python2_longs_and_scalars() {
        let h = raw("{'descr': '<i4', 'fortran_order': False, 'shape': (2L,)}");
        assert_eq!(parse_header(&h, "t").unwrap().shape, vec![2]);
        let a = decode(&encode(Dtype::F4, &[], &7f32.to_le_bytes(), 1, false), "t").unwrap();
        assert_eq!((a.shape.len(), a.to_f32().unwrap()), (0, vec![7.0]));
    }
}
