// Shared by the integration tests: where the fixtures are, and an f64 reference of kvstream's
// attention semantics (DESIGN.md) computed from a fixture's stored inputs and weights.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use kvstream_fixtures::{Fixture, Result};

/// $KVSTREAM_FIXTURES, else the repository's fixtures/ (two levels above this crate).
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("KVSTREAM_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"),
    }
}

/// A fresh empty directory under the system temp dir, unique per call (tests run in threads).
pub fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("kvstream-fixtures-{}-{}-{}", tag, std::process::id(), n));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Row-major f64 values of array `name`.
fn get(f: &Fixture, name: &str) -> Result<Vec<f64>> {
    f.array(name)?.to_f64()
}

/// y[r, j] = sum_i x[r, i] · w[i, j] + bias[j]; x [rows, n], w [n, m].
fn linear(x: &[f64], w: &[f64], bias: Option<&[f64]>, rows: usize, n: usize, m: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * m];
    for r in 0..rows {
        for j in 0..m {
            let mut acc = bias.map_or(0.0, |b| b[j]);
            for i in 0..n {
                acc += x[r * n + i] * w[i * m + j];
            }
            y[r * m + j] = acc;
        }
    }
    y
}

/// [B, L, H·d] (head h owns columns [h·d, (h+1)·d)) -> [B, H, L, d].
fn split_heads(x: &[f64], b: usize, l: usize, h: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for t in 0..l {
            for hi in 0..h {
                for di in 0..d {
                    out[((bi * h + hi) * l + t) * d + di] = x[(bi * l + t) * h * d + hi * d + di];
                }
            }
        }
    }
    out
}

/// [B, Hkv, P, d] ++ [B, Hkv, N, d] along the position axis.
fn concat_positions(past: &[f64], new: &[f64], b: usize, hk: usize, p: usize, n: usize, d: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(b * hk * (p + n) * d);
    for bh in 0..b * hk {
        out.extend_from_slice(&past[bh * p * d..(bh + 1) * p * d]);
        out.extend_from_slice(&new[bh * n * d..(bh + 1) * n * d]);
    }
    out
}

pub struct Reference {
    /// [B, T, d_out]
    pub output: Vec<f64>,
    /// [B, H, T]
    pub lse: Vec<f64>,
    /// [B, H, T, S], after dropout
    pub attn_weights: Vec<f64>,
    /// [B, Hkv, S, d_k], [B, Hkv, S, d_v]
    pub k_cache: Vec<f64>,
    pub v_cache: Vec<f64>,
}

/// The case's attention in f64 over the first `visible` keys (S for the full result; a
/// streaming prefix for partial outputs): projections, grouped heads, causal rule at
/// q_offset + t, softmax, the stored dropout mask, output projection.
pub fn reference(f: &Fixture, visible: usize) -> Result<Reference> {
    let c = &f.case.config;
    let (b, t, hq, hk, dk, dv) = (c.batch, c.t_q, c.num_heads, c.num_kv_heads, c.d_k, c.d_v);
    let s = c.s();
    let bias = |name: &str| -> Result<Option<Vec<f64>>> { if c.bias { get(f, name).map(Some) } else { Ok(None) } };
    let (bq, bk, bv, bo) = (bias("b_q")?, bias("b_k")?, bias("b_v")?, bias("b_o")?);
    let q = split_heads(&linear(&get(f, "x_q")?, &get(f, "w_q")?, bq.as_deref(), b * t, c.d_model, hq * dk), b, t, hq, dk);
    let x_kv = get(f, "x_kv")?;
    let k_new = split_heads(&linear(&x_kv, &get(f, "w_k")?, bk.as_deref(), b * c.t_kv, c.d_kv_in, hk * dk), b, c.t_kv, hk, dk);
    let v_new = split_heads(&linear(&x_kv, &get(f, "w_v")?, bv.as_deref(), b * c.t_kv, c.d_kv_in, hk * dv), b, c.t_kv, hk, dv);
    let (k, v) = if c.t_past > 0 {
        (
            concat_positions(&get(f, "k_cache_in")?, &k_new, b, hk, c.t_past, c.t_kv, dk),
            concat_positions(&get(f, "v_cache_in")?, &v_new, b, hk, c.t_past, c.t_kv, dv),
        )
    } else {
        (k_new, v_new)
    };
    let keep = if c.dropout_p > 0.0 { Some(get(f, "dropout_mask")?) } else { None };
    let group = hq / hk;
    let mut lse = vec![0.0; b * hq * t];
    let mut weights = vec![0.0; b * hq * t * s];
    let mut heads = vec![0.0; b * t * hq * dv]; // [B, T, H·d_v]
    for bi in 0..b {
        for h in 0..hq {
            let g = h / group;
            for ti in 0..t {
                let row = (bi * hq + h) * t + ti;
                let sees = |si: usize| si < visible && (!c.causal || si <= c.q_offset + ti);
                let mut scores = vec![f64::NEG_INFINITY; s];
                for (si, score) in scores.iter_mut().enumerate() {
                    if sees(si) {
                        let qr = &q[row * dk..(row + 1) * dk];
                        let kr = &k[((bi * hk + g) * s + si) * dk..][..dk];
                        *score = qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>() * c.scale;
                    }
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    lse[row] = f64::NEG_INFINITY; // no visible key: probabilities and output 0
                    continue;
                }
                let sum: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                lse[row] = max + sum.ln();
                for si in 0..s {
                    let mut p = (scores[si] - lse[row]).exp();
                    if let Some(m) = &keep {
                        p *= m[row * s + si] / (1.0 - c.dropout_p);
                    }
                    weights[row * s + si] = p;
                    let vr = &v[((bi * hk + g) * s + si) * dv..][..dv];
                    for di in 0..dv {
                        heads[(bi * t + ti) * hq * dv + h * dv + di] += p * vr[di];
                    }
                }
            }
        }
    }
    let output = linear(&heads, &get(f, "w_o")?, bo.as_deref(), b * t, hq * dv, c.d_out);
    Ok(Reference { output, lse, attn_weights: weights, k_cache: k, v_cache: v })
}

/// Index tuple of flat position i in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for k in (0..shape.len()).rev() {
        idx[k] = i % shape[k];
        i /= shape[k];
    }
    idx
}

/// Checks |got - want| <= atol + rtol·|want| everywhere (rtol 0: absolute, as for lse);
/// -inf must match -inf. The message gives the largest excess over the bound and where.
pub fn assert_close(what: &str, got: &[f32], shape: &[usize], want: &[f64], atol: f64, rtol: f64) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{}: {} values, reference has {}", what, got.len(), want.len()));
    }
    let mut worst: Option<(f64, usize)> = None;
    let mut max_diff = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        let (diff, bound) = if w == f64::NEG_INFINITY || g == f64::NEG_INFINITY {
            (if g == w { 0.0 } else { f64::INFINITY }, 0.0)
        } else {
            ((g - w).abs(), atol + rtol * w.abs())
        };
        let diff = if diff.is_nan() { f64::INFINITY } else { diff };
        max_diff = max_diff.max(diff);
        if diff > bound && worst.map_or(true, |(e, _)| diff - bound > e) {
            worst = Some((diff - bound, i));
        }
    }
    match worst {
        None => Ok(()),
        Some((_, i)) => Err(format!(
            "{}: at {:?} stored {} vs f64 reference {} (|diff| {:.3e} > atol {} + rtol {}·|ref|); largest |diff| {:.3e}",
            what,
            unravel(i, shape),
            got[i],
            want[i],
            (got[i] as f64 - want[i]).abs(),
            atol,
            rtol,
            max_diff
        )),
    }
}
