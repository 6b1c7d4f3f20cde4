// Damaged copies of a committed fixture (in a temp dir) are refused with the right error, and
// re-zipped copies (stored entries, zip64) still load to the same values.
mod common;

use std::io::{Cursor, Write};
use std::path::Path;

use common::{fixtures_dir, temp_dir};
use kvstream_fixtures::{npy, FixtureError, Manifest};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zip::write::FileOptions;
use zip::CompressionMethod;

const CASE: &str = "basic_self_attn_small";

/// (entry name, bytes) -> the entries to write instead.
type Edit<'a> = &'a dyn Fn(&str, Vec<u8>) -> Vec<(String, Vec<u8>)>;
type ManifestEdit = Box<dyn Fn(&mut Value)>;

/// The committed manifest reduced to CASE, as JSON, and the case's .npz bytes.
fn original() -> (Value, Vec<u8>) {
    let dir = fixtures_dir();
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = m["cases"].as_array_mut().unwrap();
    cases.retain(|c| c["name"] == CASE);
    assert_eq!(cases.len(), 1, "{} not in the committed manifest", CASE);
    (m, std::fs::read(dir.join(format!("{}.npz", CASE))).unwrap())
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{:02x}", b)).collect()
}

/// Writes `manifest` and `files` into a fresh temp dir and loads CASE from it.
fn load(tag: &str, manifest: &Value, files: &[(&str, &[u8])]) -> Result<kvstream_fixtures::Fixture, FixtureError> {
    let dir = temp_dir(tag);
    std::fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(manifest).unwrap()).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let r = Manifest::load(&dir).and_then(|m| m.load_case(CASE));
    std::fs::remove_dir_all(&dir).unwrap();
    r
}

fn expect_err(r: Result<kvstream_fixtures::Fixture, FixtureError>, want: &str) -> FixtureError {
    match r {
        Ok(_) => panic!("expected an error containing {:?}, the fixture loaded", want),
        Err(e) => {
            assert!(e.to_string().contains(want), "expected {:?} in: {}", want, e);
            e
        }
    }
}

/// The .npz's entries, re-zipped with `method` (and zip64 headers when `zip64`), optionally
/// edited by `edit` (entry name, bytes) -> replacement entries.
fn rezip(npz: &[u8], method: CompressionMethod, zip64: bool, edit: Edit) -> Vec<u8> {
    let mut src = zip::ZipArchive::new(Cursor::new(npz)).unwrap();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for i in 0..src.len() {
        let mut e = src.by_index(i).unwrap();
        let name = e.name().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        for (n, d) in edit(&name, data) {
            w.start_file(n, FileOptions::default().compression_method(method).large_file(zip64)).unwrap();
            w.write_all(&d).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

fn with_file(manifest: &Value, npz: &[u8]) -> Value {
    let mut m = manifest.clone();
    m["cases"][0]["sha256"] = Value::String(sha(npz));
    m
}

#[test]
fn the_reduced_copy_loads() {
    let (m, npz) = original();
    let f = load("ok", &m, &[(&format!("{}.npz", CASE), &npz)]).unwrap_or_else(|e| panic!("{}", e));
    assert_eq!(f.case.name, CASE);
}

#[test]
fn stored_and_zip64_entries_load_to_the_same_values() {
    let (m, npz) = original();
    let f0 = load("ref", &m, &[(&format!("{}.npz", CASE), &npz)]).unwrap();
    for (method, zip64) in [(CompressionMethod::Stored, false), (CompressionMethod::Stored, true), (CompressionMethod::Deflated, true)] {
        let z = rezip(&npz, method, zip64, &|n, d| vec![(n.to_string(), d)]);
        assert_ne!(z, npz);
        let f = load("rezip", &with_file(&m, &z), &[(&format!("{}.npz", CASE), &z)]).unwrap_or_else(|e| panic!("{:?} zip64={}: {}", method, zip64, e));
        for (name, a) in &f0.arrays {
            assert_eq!(f.arrays[name].bytes(), a.bytes(), "{:?} zip64={}: {}", method, zip64, name);
        }
    }
}

#[test]
fn a_changed_byte_fails_the_sha256() {
    let (m, mut npz) = original();
    let i = npz.len() / 2;
    npz[i] ^= 0x01;
    let e = expect_err(load("sha", &m, &[(&format!("{}.npz", CASE), &npz)]), "does not match the manifest's");
    assert!(matches!(e, FixtureError::Checksum { .. }));
}

#[test]
fn a_missing_file_is_an_io_error() {
    let (m, _) = original();
    let e = expect_err(load("missing", &m, &[]), "cannot read");
    assert!(matches!(e, FixtureError::Io { .. }));
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn manifest_contract_violations() {
    let (m, npz) = original();
    let file = format!("{}.npz", CASE);
    let edits: Vec<(&str, ManifestEdit, &str)> = vec![
        ("format", Box::new(|m| m["format"] = "other".into()), "expected {\"format\": \"kvstream-fixtures\""),
        ("version", Box::new(|m| m["version"] = 2.into()), "version 2"),
        ("name-traversal", Box::new(|m| m["cases"][0]["name"] = "../etc".into()), "is not a case name"),
        ("name-upper", Box::new(|m| m["cases"][0]["name"] = "Basic".into()), "is not a case name"),
        ("file-traversal", Box::new(|m| m["cases"][0]["file"] = "../basic_self_attn_small.npz".into()), "expected \"basic_self_attn_small.npz\""),
        ("no-tolerance", Box::new(|m| { m["cases"][0].as_object_mut().unwrap().remove("tolerance"); }), "lacks \"tolerance\""),
        ("bad-sha", Box::new(|m| m["cases"][0]["sha256"] = "abc".into()), "not 64 lower-case hex digits"),
        ("heads", Box::new(|m| m["cases"][0]["config"]["num_kv_heads"] = 3.into()), "not a multiple of num_kv_heads"),
        ("negative", Box::new(|m| m["cases"][0]["config"]["d_k"] = (-8).into()), "\"d_k\" must be a non-negative integer"),
        ("dtype", Box::new(|m| m["cases"][0]["arrays"]["lse"]["dtype"] = "<c8".into()), "not a supported dtype"),
        ("array-name", Box::new(|m| { let a = m["cases"][0]["arrays"]["lse"].clone(); m["cases"][0]["arrays"]["../lse"] = a; }), "array name \"../lse\""),
        ("config-shape", Box::new(|m| m["cases"][0]["arrays"]["x_q"]["shape"] = serde_json::json!([2, 7, 32])), "array x_q has shape [2, 7, 32], the config gives [2, 6, 32]"),
        ("no-output", Box::new(|m| { m["cases"][0]["arrays"].as_object_mut().unwrap().remove("output"); }), "array output is missing"),
        ("duplicate", Box::new(|m| { let c = m["cases"][0].clone(); m["cases"].as_array_mut().unwrap().push(c); }), "appears twice"),
        ("unsorted", Box::new(|m| { let mut c = m["cases"][0].clone(); c["name"] = "aaa".into(); c["file"] = "aaa.npz".into(); m["cases"].as_array_mut().unwrap().push(c); }), "out of order"),
        ("json", Box::new(|m| *m = Value::String("{".into())), "expected a JSON object"),
    ];
    for (tag, edit, want) in edits {
        let mut bad = m.clone();
        edit(&mut bad);
        let e = expect_err(load(tag, &bad, &[(&file, &npz)]), want);
        assert!(matches!(e, FixtureError::Manifest { .. }), "{}: {:?}", tag, e);
    }
    let e = Manifest::parse("x", "{not json").unwrap_err();
    assert!(e.to_string().starts_with("x/manifest.json: not valid JSON"), "{}", e);
}

#[test]
fn arrays_that_disagree_with_the_manifest() {
    let (m, npz) = original();
    let file = format!("{}.npz", CASE);
    let f64_lse = |n: &str, d: Vec<u8>| -> Vec<(String, Vec<u8>)> {
        if n != "lse.npy" {
            return vec![(n.to_string(), d)];
        }
        let a = npy::decode(&d, n).unwrap();
        let v: Vec<u8> = a.to_f64().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect();
        vec![(n.to_string(), npy::encode(npy::Dtype::parse("<f8").unwrap(), &a.shape, &v, 1, false))]
    };
    let drop_lse = |n: &str, d: Vec<u8>| if n == "lse.npy" { vec![] } else { vec![(n.to_string(), d)] };
    let extra = |n: &str, d: Vec<u8>| {
        let mut v = vec![(n.to_string(), d.clone())];
        if n == "lse.npy" {
            v.push(("lse_copy.npy".to_string(), d));
        }
        v
    };
    let not_npy = |n: &str, d: Vec<u8>| vec![(if n == "lse.npy" { "lse.txt".to_string() } else { n.to_string() }, d)];
    let dup = |n: &str, d: Vec<u8>| if n == "lse.npy" { vec![(n.to_string(), d.clone()), ("lse.npy".to_string(), d)] } else { vec![(n.to_string(), d)] };
    let truncated = |n: &str, mut d: Vec<u8>| {
        if n == "lse.npy" {
            d.truncate(d.len() - 4);
        }
        vec![(n.to_string(), d)]
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("dtype", &f64_lse, "array lse is <f8 [2, 4, 6], the manifest says <f4 [2, 4, 6]"),
        ("missing", &drop_lse, "array lse listed in the manifest is missing"),
        ("extra", &extra, "array lse_copy is in the file but not in the manifest"),
        ("not-npy", &not_npy, "entry \"lse.txt\" is not a <name>.npy"),
        ("truncated", &truncated, "(truncated)"),
        ("duplicate", &dup, "entry lse.npy appears twice"),
    ];
    for (tag, edit, want) in cases {
        let z = rezip(&npz, CompressionMethod::Deflated, false, edit);
        expect_err(load(tag, &with_file(&m, &z), &[(&file, &z)]), want);
    }

    let garbage = b"PK\x03\x04 not really a zip".to_vec();
    let e = expect_err(load("garbage", &with_file(&m, &garbage), &[(&file, &garbage)]), "not a readable zip archive");
    assert!(matches!(e, FixtureError::Zip { .. }));
}

#[test]
fn errors_name_the_file() {
    let (m, mut npz) = original();
    npz[100] ^= 0xff;
    let e = load("name", &m, &[(&format!("{}.npz", CASE), &npz)]).unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains(&format!("{}.npz", CASE)) && Path::new(&shown[..shown.find(':').unwrap()]).ends_with(format!("{}.npz", CASE)), "{}", shown);
}

#[test]
fn a_corrupt_entry_fails_its_crc_even_without_a_manifest() {
    let (_, npz) = original();
    let mut z = rezip(&npz, CompressionMethod::Stored, false, &|n, d| vec![(n.to_string(), d)]);
    // Stored entries hold the NPY bytes as they are: flip a data byte of the first array.
    let at = z.windows(6).position(|w| w == b"\x93NUMPY").unwrap() + 200;
    z[at] ^= 0x01;
    let e = kvstream_fixtures::read_npz(&z, Path::new("x.npz")).unwrap_err();
    assert!(matches!(e, FixtureError::Zip { .. }) && e.to_string().contains("x.npz"), "{:?}", e);
    assert!(e.to_string().to_lowercase().contains("checksum"), "{}", e);
}
