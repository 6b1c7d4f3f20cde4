// Every committed fixture loads, converts, and its stored results agree with an f64 recomputation
// from its stored inputs and weights within the manifest's tolerance. Nothing here hard-codes a
// stored value: the fixtures may be regenerated.
mod common;

use common::{assert_close, fixtures_dir, reference};
use kvstream_fixtures::{Fixture, Kind, Manifest};

fn all() -> (Manifest, Vec<Fixture>) {
    let dir = fixtures_dir();
    let m = Manifest::load(&dir).unwrap_or_else(|e| panic!("{}", e));
    let fixtures = m.cases.iter().map(|c| m.load_entry(c).unwrap_or_else(|e| panic!("{}", e))).collect();
    (m, fixtures)
}

#[test]
fn manifest_lists_at_least_8_cases() {
    let (m, _) = all();
    let names: Vec<&str> = m.cases.iter().map(|c| c.name.as_str()).collect();
    assert!(m.cases.len() >= 8, "manifest lists {} cases: {:?}", m.cases.len(), names);
    assert!(m.case("basic_self_attn_small").is_some(), "no basic_self_attn_small in {:?}", names);
}

#[test]
fn every_fixture_loads_and_converts() {
    let (m, fixtures) = all();
    for f in &fixtures {
        assert_eq!(f.arrays.len(), f.case.arrays.len(), "{}", f.case.name);
        for (name, a) in &f.arrays {
            let (data, shape) = f.f32(name).unwrap_or_else(|e| panic!("{}", e));
            assert_eq!(shape, f.case.arrays[name].shape, "{}:{}", f.case.name, name);
            assert_eq!(data.len(), shape.iter().product::<usize>(), "{}:{}", f.case.name, name);
            match a.dtype.kind {
                // lse is -inf for a row that sees no key; nothing else may be non-finite.
                Kind::Float if name != "lse" => {
                    assert!(data.iter().all(|x| x.is_finite()), "{}:{} has a non-finite value", f.case.name, name)
                }
                Kind::UInt | Kind::Bool => {
                    assert!(data.iter().all(|&x| x == 0.0 || x == 1.0), "{}:{} is a mask with a value other than 0/1", f.case.name, name)
                }
                _ => {}
            }
        }
        if let Some(sizes) = &f.case.config.chunk_sizes {
            let stored = f.array("chunk_sizes").unwrap().to_i64().unwrap();
            let want: Vec<i64> = sizes.iter().map(|&s| s as i64).collect();
            assert_eq!(stored, want, "{}: chunk_sizes array vs config.chunk_sizes", f.case.name);
        }
        eprintln!("loaded {:<24} {:>2} arrays  sha256 {}…", f.case.name, f.arrays.len(), &f.case.sha256[..12]);
    }
    assert_eq!(fixtures.len(), m.cases.len());
}

/// Compares every stored result of `f` with the f64 reference; Err lists the failures.
fn check_case(f: &Fixture) -> Result<Vec<String>, String> {
    let c = &f.case.config;
    let tol = &f.case.tolerance;
    let r = reference(f, c.s()).map_err(|e| e.to_string())?;
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    let mut check = |name: &str, want: &[f64], rtol: f64| match f.arrays.get(name) {
        None => {}
        Some(a) => {
            let got = a.to_f32().unwrap();
            if let Err(e) = assert_close(&format!("{}:{}", f.case.name, name), &got, &a.shape, want, tol.atol, rtol) {
                failures.push(e);
            }
            checked.push(name.to_string());
        }
    };
    check("output", &r.output, tol.rtol);
    check("lse", &r.lse, 0.0); // absolute: lse is a log
    check("attn_weights", &r.attn_weights, tol.rtol);
    check("k_cache", &r.k_cache, tol.rtol);
    check("v_cache", &r.v_cache, tol.rtol);
    if let (Some(sizes), Some(p)) = (&c.chunk_sizes, f.arrays.get("partial_outputs")) {
        // Streamed memory: after chunk i the output over the cached prefix and the keys seen
        // so far (the causal rule, if any, still applies to those).
        let got = p.to_f32().unwrap();
        let per = got.len() / sizes.len();
        let mut seen = c.t_past;
        for (i, n) in sizes.iter().enumerate() {
            seen += n;
            let want = reference(f, seen).map_err(|e| e.to_string())?.output;
            if let Err(e) = assert_close(&format!("{}:partial_outputs[{}]", f.case.name, i), &got[i * per..(i + 1) * per], &p.shape[1..], &want, tol.atol, tol.rtol) {
                failures.push(e);
            }
        }
        checked.push("partial_outputs".to_string());
    }
    if failures.is_empty() {
        Ok(checked)
    } else {
        Err(failures.join("\n"))
    }
}

#[test]
fn basic_self_attn_small_recomputes_in_f64() {
    let dir = fixtures_dir();
    let f = kvstream_fixtures::load_fixture(&dir, "basic_self_attn_small").unwrap_or_else(|e| panic!("{}", e));
    let checked = check_case(&f).unwrap_or_else(|e| panic!("{}", e));
    for must in ["output", "lse", "attn_weights"] {
        assert!(checked.iter().any(|c| c == must), "basic_self_attn_small: {} not stored, so not checked", must);
    }
}

#[test]
fn every_case_recomputes_in_f64() {
    let (_, fixtures) = all();
    let mut failures = Vec::new();
    for f in &fixtures {
        if !f.case.config.unknown_keys.is_empty() {
            // A newer writer's feature this reference does not implement: say so, don't guess.
            eprintln!("skipped {}: config keys {:?} unknown to this reference", f.case.name, f.case.config.unknown_keys);
            continue;
        }
        match check_case(f) {
            Ok(checked) => eprintln!("recomputed {:<24} {}", f.case.name, checked.join(", ")),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The reference is sharp enough to catch a wrong number: one stored output value moved by
/// 10·atol (in memory) fails the check.
#[test]
fn recompute_catches_a_perturbed_output() {
    let dir = fixtures_dir();
    let f = kvstream_fixtures::load_fixture(&dir, "basic_self_attn_small").unwrap();
    let r = reference(&f, f.case.config.s()).unwrap();
    let a = f.array("output").unwrap();
    let mut got = a.to_f32().unwrap();
    let i = got.len() / 2 + 3;
    got[i] += (10.0 * f.case.tolerance.atol) as f32 + (f.case.tolerance.rtol * r.output[i].abs()) as f32;
    let e = assert_close("output", &got, &a.shape, &r.output, f.case.tolerance.atol, f.case.tolerance.rtol).unwrap_err();
    let shape = &a.shape;
    let idx = vec![i / (shape[1] * shape[2]), (i / shape[2]) % shape[1], i % shape[2]];
    assert!(e.contains(&format!("{:?}", idx)), "{}", e);
}
