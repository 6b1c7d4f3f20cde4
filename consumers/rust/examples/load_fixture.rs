// Loads a kvstream fixture and lists its arrays as Vec<f32> + shape.
// cargo run --example load_fixture -- ../../fixtures basic_self_attn_small
use kvstream_fixtures::{load_fixture, FixtureError};

/// One line per array: name, dtype, shape, first value.
pub fn summary(dir: &str, case: &str) -> Result<Vec<String>, FixtureError> {
    // Validates manifest.json, checks the file's sha256 and every array's shape and dtype.
    let fixture = load_fixture(dir, case)?;
    let tol = &fixture.case.tolerance;
    let mut lines = vec![format!("{case}: atol {} rtol {}", tol.atol, tol.rtol)];
    for (name, array) in &fixture.arrays {
        let (data, shape) = array.to_f32_with_shape()?; // row-major values, dims
        lines.push(format!("{name}: {} {shape:?} first {}", array.dtype, data[0]));
    }
    Ok(lines)
}

#[allow(dead_code)]
fn main() -> Result<(), FixtureError> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).map_or("../../fixtures", String::as_str);
    let case = args.get(2).map_or("basic_self_attn_small", String::as_str);
    for line in summary(dir, case)? {
        println!("{line}");
    }
    Ok(())
}
