// Files written by numpy itself (np.savez, np.savez_compressed, np.lib.format versions 2.0 and
// 3.0; Fortran order, big-endian, f8, f2, bool, integers) read back to numpy's values.
// Needs python3 with numpy (CI installs python3-numpy); fails, rather than skips, without it.
mod common;

use std::process::Command;

use kvstream_fixtures::{npy, read_npz};
use serde_json::Value;

const WRITER: &str = r#"
import json, sys, numpy as np
out = sys.argv[1]
arrays = {
    'f4': np.linspace(-3, 3, 12, dtype='<f4').reshape(3, 4),
    'f4_fortran': np.asfortranarray(np.arange(24, dtype='<f4').reshape(2, 3, 4) / 7),
    'f4_big': np.arange(6, dtype='>f4').reshape(2, 3) * -1.25,
    'f8': np.array([0.1, -2.0, 1e-40, 3.5], dtype='<f8'),
    'f2': np.array([1.0, -0.5, 65504.0, 6e-8], dtype='<f2'),
    'i4': np.array([[-7, 0], [2**24, 5]], dtype='<i4'),
    'i8_big': np.array([-(2**40), 3], dtype='>i8'),
    'u1': np.array([0, 1, 255], dtype='|u1'),
    'b1': np.array([True, False, True]),
    'scalar': np.float32(2.5).reshape(()),
    'empty': np.zeros((0, 3), dtype='<f4'),
}
np.savez(out + '/stored.npz', **arrays)
np.savez_compressed(out + '/deflated.npz', **arrays)
for v in [(1, 0), (2, 0), (3, 0)]:
    with open(out + '/v%d.npy' % v[0], 'wb') as f:
        np.lib.format.write_array(f, arrays['f4_fortran'], version=v)
expect = {k: {'descr': a.dtype.str, 'shape': list(a.shape),
              'values': [float(x) for x in np.ascontiguousarray(a).reshape(-1)]} for k, a in arrays.items()}
json.dump(expect, open(out + '/expect.json', 'w'))
"#;

#[test]
fn numpy_written_files_read_back() {
    let dir = common::temp_dir("numpy");
    let run = Command::new("python3").arg("-c").arg(WRITER).arg(&dir).output();
    let run = run.unwrap_or_else(|e| panic!("python3 with numpy is needed for this test: {}", e));
    assert!(run.status.success(), "python3 failed: {}", String::from_utf8_lossy(&run.stderr));
    let expect: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expect.json")).unwrap()).unwrap();
    let expect = expect.as_object().unwrap();
    for file in ["stored.npz", "deflated.npz"] {
        let path = dir.join(file);
        let arrays = read_npz(&std::fs::read(&path).unwrap(), &path).unwrap_or_else(|e| panic!("{}", e));
        assert_eq!(arrays.len(), expect.len(), "{}", file);
        for (name, e) in expect {
            let a = &arrays[name];
            let want: Vec<f64> = e["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(a.dtype, npy::Dtype::parse(e["descr"].as_str().unwrap()).unwrap(), "{}:{}", file, name);
            assert_eq!(a.shape, shape, "{}:{}", file, name);
            assert_eq!(a.to_f64().unwrap(), want, "{}:{} values (exact)", file, name);
            if name != "i8_big" {
                // Every value here is representable in f32 except i8_big's -2^40 (refused).
                let f: Vec<f32> = want.iter().map(|&x| x as f32).collect();
                assert_eq!(a.to_f32().unwrap(), f, "{}:{} as f32", file, name);
            } else {
                assert!(a.to_f32().is_err(), "{}:{}: -2^40 must not silently round to f32", file, name);
            }
        }
    }
    let want: Vec<f64> = expect["f4_fortran"]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for v in [1u8, 2, 3] {
        let bytes = std::fs::read(dir.join(format!("v{}.npy", v))).unwrap();
        let h = npy::parse_header(&bytes, "v.npy").unwrap();
        assert_eq!((h.version.0, h.fortran_order), (v, true));
        assert_eq!(npy::decode(&bytes, "v.npy").unwrap().to_f64().unwrap(), want, "version {}.0", v);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
