// fixtures/manifest.json (kvstream's DESIGN.md and docs/fixtures.md):
// { "format": "kvstream-fixtures", "version": 1, "cases": [ { name, file, description, seed,
//   config, arrays: { <name>: { shape, dtype } }, tolerance: { atol, rtol, reason }, sha256,
//   generator } ] }, cases sorted by name. Unknown extra fields are allowed (same version).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{FixtureError, Result};
use crate::npy::Dtype;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "kvstream-fixtures";
pub const VERSION: u64 = 1;

/// The attention configuration of a case (names as in the manifest).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub batch: usize,
    pub d_model: usize,
    pub d_kv_in: usize,
    pub d_out: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub d_k: usize,
    pub d_v: usize,
    /// T: queries.
    pub t_q: usize,
    /// S_new: keys/values in x_kv.
    pub t_kv: usize,
    /// S_past: keys/values in k_cache_in/v_cache_in, before x_kv's.
    pub t_past: usize,
    pub causal: bool,
    /// Absolute position of query 0.
    pub q_offset: usize,
    pub scale: f64,
    pub dropout_p: f64,
    pub bias: bool,
    pub chunk_sizes: Option<Vec<usize>>,
    /// Config keys this crate does not know (a newer writer's features), sorted.
    pub unknown_keys: Vec<String>,
}

/// The config keys of manifest version 1.
pub const CONFIG_KEYS: [&str; 17] = [
    "batch", "d_model", "d_kv_in", "d_out", "num_heads", "num_kv_heads", "d_k", "d_v", "t_q", "t_kv", "t_past",
    "causal", "q_offset", "scale", "dropout_p", "bias", "chunk_sizes",
];

impl Config {
    /// S = S_past + S_new.
    pub fn s(&self) -> usize {
        self.t_past + self.t_kv
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ArraySpec {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
}

/// One manifest entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub name: String,
    pub file: String,
    pub description: String,
    pub seed: u64,
    pub config: Config,
    pub arrays: BTreeMap<String, ArraySpec>,
    pub tolerance: Tolerance,
    /// Lower-case hex sha256 of the .npz bytes.
    pub sha256: String,
    pub generator: String,
}

/// A parsed and validated manifest.json.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The fixture folder.
    pub dir: PathBuf,
    pub cases: Vec<Case>,
}

/// Case names: `[a-z0-9][a-z0-9_-]{0,63}`, safe as file names anywhere.
pub fn valid_case_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Array names: `[A-Za-z0-9_]{1,64}` (they become `<name>.npy` zip entries).
pub fn valid_array_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl Manifest {
    /// Reads and validates `<dir>/manifest.json`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Manifest> {
        let dir = dir.as_ref();
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|source| FixtureError::Io { path: path.clone(), source })?;
        Manifest::parse(dir, &text)
    }

    /// Validates manifest text; `dir` is the folder its files live in (named in errors).
    pub fn parse(dir: impl AsRef<Path>, text: &str) -> Result<Manifest> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(MANIFEST);
        let fail = |message: String| FixtureError::Manifest { path: path.clone(), message };
        let root: Value = serde_json::from_str(text).map_err(|e| fail(format!("not valid JSON ({})", e)))?;
        let obj = root.as_object().ok_or_else(|| fail("expected a JSON object".to_string()))?;
        let format = obj.get("format");
        let version = obj.get("version");
        if format.and_then(Value::as_str) != Some(FORMAT) || version.and_then(Value::as_u64) != Some(VERSION) {
            return Err(fail(format!(
                "expected {{\"format\": \"{}\", \"version\": {}, \"cases\": [...]}}, got format {} version {}",
                FORMAT,
                VERSION,
                format.map_or("none".to_string(), Value::to_string),
                version.map_or("none".to_string(), Value::to_string)
            )));
        }
        let list = obj.get("cases").and_then(Value::as_array).ok_or_else(|| fail("\"cases\" must be an array".to_string()))?;
        let mut cases: Vec<Case> = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            let case = parse_case(v).map_err(|m| fail(format!("case {}: {}", i, m)))?;
            if let Some(prev) = cases.last() {
                if prev.name >= case.name {
                    let what = if prev.name == case.name { "appears twice" } else { "is out of order (cases are sorted by name)" };
                    return Err(fail(format!("case {} ({}) {}", i, case.name, what)));
                }
            }
            cases.push(case);
        }
        Ok(Manifest { dir, cases })
    }

    pub fn case(&self, name: &str) -> Option<&Case> {
        self.cases.iter().find(|c| c.name == name)
    }

    /// The path of a case's file: always `<dir>/<name>.npz` (validated on load).
    pub fn path_of(&self, case: &Case) -> PathBuf {
        self.dir.join(&case.file)
    }
}

type Fields<'a> = &'a Map<String, Value>;

fn field<'a>(o: Fields<'a>, key: &str) -> std::result::Result<&'a Value, String> {
    o.get(key).ok_or_else(|| format!("lacks \"{}\"", key))
}

fn string(o: Fields, key: &str) -> std::result::Result<String, String> {
    let v = field(o, key)?;
    v.as_str().map(str::to_string).ok_or_else(|| format!("\"{}\" must be a string, got {}", key, v))
}

fn uint(o: Fields, key: &str) -> std::result::Result<usize, String> {
    let v = field(o, key)?;
    v.as_u64().and_then(|x| usize::try_from(x).ok()).ok_or_else(|| format!("\"{}\" must be a non-negative integer, got {}", key, v))
}

fn positive(o: Fields, key: &str) -> std::result::Result<usize, String> {
    match uint(o, key)? {
        0 => Err(format!("\"{}\" must be positive, got 0", key)),
        x => Ok(x),
    }
}

fn boolean(o: Fields, key: &str) -> std::result::Result<bool, String> {
    let v = field(o, key)?;
    v.as_bool().ok_or_else(|| format!("\"{}\" must be true or false, got {}", key, v))
}

fn number(o: Fields, key: &str) -> std::result::Result<f64, String> {
    let v = field(o, key)?;
    v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| format!("\"{}\" must be a finite number, got {}", key, v))
}

fn object<'a>(o: Fields<'a>, key: &str) -> std::result::Result<Fields<'a>, String> {
    let v = field(o, key)?;
    v.as_object().ok_or_else(|| format!("\"{}\" must be an object, got {}", key, v))
}

fn uint_list(v: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    let bad = || format!("{} must be an array of non-negative integers, got {}", what, v);
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()).ok_or_else(bad))
        .collect()
}

fn parse_case(v: &Value) -> std::result::Result<Case, String> {
    let o = v.as_object().ok_or_else(|| format!("expected an object, got {}", v))?;
    let name = string(o, "name")?;
    if !valid_case_name(&name) {
        return Err(format!("name {:?} is not a case name ([a-z0-9_-], at most 64, starting with a letter or digit)", name));
    }
    let in_case = |m: String| format!("{}: {}", name, m);
    let file = string(o, "file").map_err(in_case)?;
    if file != format!("{}.npz", name) {
        return Err(in_case(format!("names file {:?}, expected \"{}.npz\" inside the fixture folder", file, name)));
    }
    let description = string(o, "description").map_err(in_case)?;
    let seed = field(o, "seed").map_err(in_case)?;
    let seed = seed.as_u64().ok_or_else(|| in_case(format!("\"seed\" must be a non-negative integer, got {}", seed)))?;
    let config = parse_config(object(o, "config").map_err(in_case)?).map_err(|m| in_case(format!("config: {}", m)))?;
    let t = object(o, "tolerance").map_err(in_case)?;
    let tolerance = Tolerance {
        atol: number(t, "atol").map_err(|m| in_case(format!("tolerance: {}", m)))?,
        rtol: number(t, "rtol").map_err(|m| in_case(format!("tolerance: {}", m)))?,
        reason: string(t, "reason").map_err(|m| in_case(format!("tolerance: {}", m)))?,
    };
    if tolerance.atol < 0.0 || tolerance.rtol < 0.0 {
        return Err(in_case(format!("tolerance must be non-negative, got atol {} rtol {}", tolerance.atol, tolerance.rtol)));
    }
    let sha256 = string(o, "sha256").map_err(in_case)?;
    if sha256.len() != 64 || !sha256.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return Err(in_case(format!("sha256 {:?} is not 64 lower-case hex digits", sha256)));
    }
    let generator = string(o, "generator").map_err(in_case)?;
    let mut arrays = BTreeMap::new();
    for (key, spec) in object(o, "arrays").map_err(in_case)? {
        if !valid_array_name(key) {
            return Err(in_case(format!("array name {:?} is not [A-Za-z0-9_]{{1,64}}", key)));
        }
        let s = spec.as_object().ok_or_else(|| in_case(format!("arrays.{} must be an object", key)))?;
        let shape = uint_list(field(s, "shape").map_err(|m| in_case(format!("arrays.{}: {}", key, m)))?, &format!("arrays.{}.shape", key))
            .map_err(in_case)?;
        let descr = string(s, "dtype").map_err(|m| in_case(format!("arrays.{}: {}", key, m)))?;
        let dtype = Dtype::parse(&descr).ok_or_else(|| in_case(format!("arrays.{}.dtype {:?} is not a supported dtype", key, descr)))?;
        arrays.insert(key.clone(), ArraySpec { shape, dtype });
    }
    let case = Case { name, file, description, seed, config, arrays, tolerance, sha256, generator };
    check_shapes(&case).map_err(|m| format!("{}: {}", case.name, m))?;
    Ok(case)
}

fn parse_config(o: Fields) -> std::result::Result<Config, String> {
    let chunk_sizes = match field(o, "chunk_sizes")? {
        Value::Null => None,
        v => Some(uint_list(v, "\"chunk_sizes\"")?),
    };
    let c = Config {
        batch: positive(o, "batch")?,
        d_model: positive(o, "d_model")?,
        d_kv_in: positive(o, "d_kv_in")?,
        d_out: positive(o, "d_out")?,
        num_heads: positive(o, "num_heads")?,
        num_kv_heads: positive(o, "num_kv_heads")?,
        d_k: positive(o, "d_k")?,
        d_v: positive(o, "d_v")?,
        t_q: uint(o, "t_q")?,
        t_kv: uint(o, "t_kv")?,
        t_past: uint(o, "t_past")?,
        causal: boolean(o, "causal")?,
        q_offset: uint(o, "q_offset")?,
        scale: number(o, "scale")?,
        dropout_p: number(o, "dropout_p")?,
        bias: boolean(o, "bias")?,
        chunk_sizes,
        unknown_keys: o.keys().filter(|k| !CONFIG_KEYS.contains(&k.as_str())).cloned().collect(),
    };
    if c.num_heads % c.num_kv_heads != 0 {
        return Err(format!("num_heads {} is not a multiple of num_kv_heads {}", c.num_heads, c.num_kv_heads));
    }
    if !(0.0..1.0).contains(&c.dropout_p) {
        return Err(format!("dropout_p must be in [0, 1), got {}", c.dropout_p));
    }
    if let Some(sizes) = &c.chunk_sizes {
        if sizes.is_empty() || sizes.contains(&0) || sizes.iter().sum::<usize>() != c.t_kv {
            return Err(format!("chunk_sizes {:?} must be positive and sum to t_kv = {}", sizes, c.t_kv));
        }
    }
    Ok(c)
}

/// The shape each known array must have under the case's config (docs/fixtures.md's table).
/// Arrays of other names are not checked here.
pub fn expected_shape(c: &Config, array: &str) -> Option<Vec<usize>> {
    let (b, t, s, h, hk) = (c.batch, c.t_q, c.s(), c.num_heads, c.num_kv_heads);
    let n = c.chunk_sizes.as_ref().map_or(0, Vec::len);
    Some(match array {
        "x_q" => vec![b, t, c.d_model],
        "x_kv" => vec![b, c.t_kv, c.d_kv_in],
        "w_q" => vec![c.d_model, h * c.d_k],
        "w_k" => vec![c.d_kv_in, hk * c.d_k],
        "w_v" => vec![c.d_kv_in, hk * c.d_v],
        "w_o" => vec![h * c.d_v, c.d_out],
        "b_q" => vec![h * c.d_k],
        "b_k" => vec![hk * c.d_k],
        "b_v" => vec![hk * c.d_v],
        "b_o" => vec![c.d_out],
        "k_cache_in" => vec![b, hk, c.t_past, c.d_k],
        "v_cache_in" => vec![b, hk, c.t_past, c.d_v],
        "output" => vec![b, t, c.d_out],
        "lse" => vec![b, h, t],
        "attn_weights" | "dropout_mask" => vec![b, h, t, s],
        "k_cache" => vec![b, hk, s, c.d_k],
        "v_cache" => vec![b, hk, s, c.d_v],
        "chunk_sizes" => vec![n],
        "partial_outputs" => vec![n, b, t, c.d_out],
        _ => return None,
    })
}

/// Every case has its inputs, weights and output; known arrays have the config's shapes.
fn check_shapes(case: &Case) -> std::result::Result<(), String> {
    let c = &case.config;
    for required in ["x_q", "x_kv", "w_q", "w_k", "w_v", "w_o", "output"] {
        if !case.arrays.contains_key(required) {
            return Err(format!("array {} is missing", required));
        }
    }
    if c.bias {
        for b in ["b_q", "b_k", "b_v", "b_o"] {
            if !case.arrays.contains_key(b) {
                return Err(format!("config.bias is true but array {} is missing", b));
            }
        }
    }
    if c.t_past > 0 && !(case.arrays.contains_key("k_cache_in") && case.arrays.contains_key("v_cache_in")) {
        return Err(format!("config.t_past is {} but k_cache_in/v_cache_in are missing", c.t_past));
    }
    if c.dropout_p > 0.0 && !case.arrays.contains_key("dropout_mask") {
        return Err(format!("config.dropout_p is {} but dropout_mask is missing", c.dropout_p));
    }
    for (name, spec) in &case.arrays {
        if let Some(want) = expected_shape(c, name) {
            if spec.shape != want {
                return Err(format!("array {} has shape {:?}, the config gives {:?}", name, spec.shape, want));
            }
        }
    }
    Ok(())
}
