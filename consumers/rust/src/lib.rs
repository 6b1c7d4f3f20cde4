//! Reads kvstream's golden fixtures: `manifest.json` plus one `.npz` (a zip of `.npy` files)
//! per case. [`Manifest::load`] validates the manifest; [`load_fixture`] / [`Manifest::load_case`]
//! check the file's sha256, decode every array and check its shape and dtype against the
//! manifest. [`Array::to_f32`] gives the values as `Vec<f32>` (C order) for any tensor library.
//!
//! ```
//! use kvstream_fixtures::{load_fixture, Manifest};
//!
//! # fn main() -> Result<(), kvstream_fixtures::FixtureError> {
//! # let dir = std::env::var_os("KVSTREAM_FIXTURES").map(std::path::PathBuf::from)
//! #     .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"));
//! let manifest = Manifest::load(&dir)?;
//! assert!(manifest.cases.len() >= 8);
//! let fixture = load_fixture(&dir, "basic_self_attn_small")?;
//! let (data, shape) = fixture.f32("x_q")?; // row-major [B, T, d_model]
//! assert_eq!(data.len(), shape.iter().product::<usize>());
//! # Ok(())
//! # }
//! ```

mod error;
pub mod manifest;
pub mod npy;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use error::{FixtureError, Result};
pub use manifest::{ArraySpec, Case, Config, Manifest, Tolerance};
pub use npy::{Array, ByteOrder, Dtype, Kind};

/// A case's arrays, checked against its manifest entry.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub case: Case,
    pub path: PathBuf,
    pub arrays: BTreeMap<String, Array>,
}

impl Fixture {
    pub fn array(&self, name: &str) -> Result<&Array> {
        self.arrays.get(name).ok_or_else(|| FixtureError::Mismatch {
            path: self.path.clone(),
            message: format!("case {} has no array {} (has: {})", self.case.name, name, self.arrays.keys().cloned().collect::<Vec<_>>().join(", ")),
        })
    }

    /// `(values as f32 in C order, shape)` of array `name`.
    pub fn f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        self.array(name)?.to_f32_with_shape()
    }
}

/// Loads case `name` from the fixture folder `dir` (reads and validates the manifest first).
pub fn load_fixture(dir: impl AsRef<Path>, name: &str) -> Result<Fixture> {
    let manifest = Manifest::load(dir)?;
    manifest.load_case(name)
}

impl Manifest {
    /// Loads the case named `name`.
    pub fn load_case(&self, name: &str) -> Result<Fixture> {
        let case = self.case(name).ok_or_else(|| FixtureError::Manifest {
            path: self.dir.join(manifest::MANIFEST),
            message: format!("no case named {} (have: {})", name, self.cases.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")),
        })?;
        self.load_entry(case)
    }

    /// Loads a case: sha256 of the file, every entry decoded, arrays exactly those listed
    /// with the listed shapes and dtypes.
    pub fn load_entry(&self, case: &Case) -> Result<Fixture> {
        let path = self.path_of(case);
        let bytes = std::fs::read(&path).map_err(|source| FixtureError::Io { path: path.clone(), source })?;
        let actual = hex(&Sha256::digest(&bytes));
        if actual != case.sha256 {
            return Err(FixtureError::Checksum { path, expected: case.sha256.clone(), actual });
        }
        let mut arrays = read_npz(&bytes, &path)?;
        let mismatch = |message: String| FixtureError::Mismatch { path: path.clone(), message };
        for (name, spec) in &case.arrays {
            let a = arrays.get_mut(name).ok_or_else(|| mismatch(format!("array {} listed in the manifest is missing", name)))?;
            // bf16 is stored as its '<u2' bit pattern; only the manifest says which it is.
            let bf16_bits = spec.dtype.kind == Kind::BFloat16 && a.dtype == Dtype::parse("<u2").unwrap();
            if (a.dtype != spec.dtype && !bf16_bits) || a.shape != spec.shape {
                return Err(mismatch(format!("array {} is {} {:?}, the manifest says {} {:?}", name, a.dtype, a.shape, spec.dtype, spec.shape)));
            }
            if bf16_bits {
                a.mark_bfloat16();
            }
        }
        if let Some(extra) = arrays.keys().find(|k| !case.arrays.contains_key(*k)) {
            return Err(mismatch(format!("array {} is in the file but not in the manifest", extra)));
        }
        Ok(Fixture { case: case.clone(), path, arrays })
    }
}

/// Decodes an .npz (stored or deflated entries, zip64 and data descriptors as the zip crate
/// reads them). Entry sizes are checked before inflating. `path` names the file in errors.
pub fn read_npz(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, Array>> {
    let zip_err = |message: String| FixtureError::Zip { path: path.to_path_buf(), message };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| zip_err(format!("not a readable zip archive ({})", e)))?;
    let mut out = BTreeMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| zip_err(format!("entry {}: {}", i, e)))?;
        let file = entry.name().to_string();
        let name = match file.strip_suffix(".npy") {
            Some(n) if manifest::valid_array_name(n) => n.to_string(),
            _ => return Err(zip_err(format!("entry {:?} is not a <name>.npy file with a name of [A-Za-z0-9_]", file))),
        };
        let limit = (npy::MAX_NPY_BYTES + npy::MAX_HEADER_BYTES + 16) as u64;
        if entry.size() > limit {
            return Err(zip_err(format!("entry {} inflates to {} bytes, over the limit", file, entry.size())));
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        // The zip crate checks the CRC-32 when the entry is read to its end.
        (&mut entry).take(limit + 1).read_to_end(&mut data).map_err(|e| zip_err(format!("entry {}: {}", file, e)))?;
        if data.len() as u64 != entry.size() {
            return Err(zip_err(format!("entry {} holds {} bytes, its header says {}", file, data.len(), entry.size())));
        }
        let array = npy::decode(&data, &format!("{}:{}", path.display(), file))?;
        if out.insert(name, array).is_some() {
            return Err(zip_err(format!("entry {} appears twice", file)));
        }
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{:02x}", b)).collect()
}
