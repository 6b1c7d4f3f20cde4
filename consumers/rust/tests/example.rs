// Runs examples/load_fixture.rs (the README's Rust example) against the committed fixtures.
mod common;

#[path = "../examples/load_fixture.rs"]
mod example;

#[test]
fn the_readme_example_runs() {
    let dir = common::fixtures_dir();
    let m = kvstream_fixtures::Manifest::load(&dir).unwrap();
    let case = &m.cases[0];
    let lines = example::summary(dir.to_str().unwrap(), &case.name).unwrap_or_else(|e| panic!("{}", e));
    assert_eq!(lines.len(), 1 + case.arrays.len(), "{:?}", lines);
    for (name, spec) in &case.arrays {
        let want = format!("{}: {} {:?} first ", name, spec.dtype, spec.shape);
        assert!(lines.iter().any(|l| l.starts_with(&want)), "no line starting {:?} in {:?}", want, lines);
    }
}
