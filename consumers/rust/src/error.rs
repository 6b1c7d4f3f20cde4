use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong reading a kvstream fixture folder. Each variant names the file
/// (and the zip entry or array, where there is one); `Display` gives `<where>: <problem>`.
#[derive(Debug)]
pub enum FixtureError {
    /// A file could not be read.
    Io { path: PathBuf, source: std::io::Error },
    /// manifest.json is not JSON, or breaks the manifest contract (format, version, names,
    /// fields, shapes against the config).
    Manifest { path: PathBuf, message: String },
    /// The .npz bytes do not hash to the manifest's sha256.
    Checksum { path: PathBuf, expected: String, actual: String },
    /// The .npz is not a readable zip archive (or an entry is not a `<name>.npy`, or too big).
    Zip { path: PathBuf, message: String },
    /// An NPY entry is malformed: magic, version, header, or data size.
    Npy { source_name: String, message: String },
    /// A dtype this crate does not read (complex, strings, objects, structured, ...).
    UnsupportedDtype { source_name: String, dtype: String },
    /// A value that cannot be converted as asked (integer beyond f32's exact range, f64
    /// beyond f32's range, float asked for as an integer).
    Conversion { source_name: String, message: String },
    /// The arrays in a file disagree with the manifest: missing, unlisted, shape or dtype.
    Mismatch { path: PathBuf, message: String },
}

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FixtureError::Io { path, source } => write!(f, "{}: cannot read ({})", path.display(), source),
            FixtureError::Manifest { path, message } => write!(f, "{}: {}", path.display(), message),
            FixtureError::Checksum { path, expected, actual } => {
                write!(f, "{}: sha256 {} does not match the manifest's {}", path.display(), actual, expected)
            }
            FixtureError::Zip { path, message } => write!(f, "{}: {}", path.display(), message),
            FixtureError::Npy { source_name, message } => write!(f, "{}: {}", source_name, message),
            FixtureError::UnsupportedDtype { source_name, dtype } => write!(
                f,
                "{}: dtype {} is not supported (expected a bool, integer or float of 1, 2, 4 or 8 bytes, e.g. <f4, <i4, |u1)",
                source_name, dtype
            ),
            FixtureError::Conversion { source_name, message } => write!(f, "{}: {}", source_name, message),
            FixtureError::Mismatch { path, message } => write!(f, "{}: {}", path.display(), message),
        }
    }
}

impl std::error::Error for FixtureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FixtureError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, FixtureError>;
