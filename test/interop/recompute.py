"""Reads every fixture in a kvstream manifest with numpy and recomputes it independently.

Usage: python3 recompute.py DIR  ->  prints one JSON object per case:
  {"name", "shapes_ok", "checks": {array: max_excess}, "problems": [...]}
max_excess <= 0 means within the manifest's atol + rtol*|expected|. Follows DESIGN semantics in
float64: projections, grouped heads, causal mask at q_offset, dropout from the stored mask,
and, for chunked cases, the equivalence to one pass (prefix passes for partial_outputs).
"""
import json
import os
import sys

import numpy as np


def heads(x, n, d):  # [B,T,n*d] -> [B,n,T,d]
    B, T, _ = x.shape
    return x.reshape(B, T, n, d).transpose(0, 2, 1, 3)


def attend(q, k, v, scale, causal, q_offset, keep=None, p=0.0):
    """q [B,H,T,dk], k [B,Hkv,S,dk], v [B,Hkv,S,dv] -> out [B,H,T,dv], lse [B,H,T], probs [B,H,T,S]."""
    B, H, T, _ = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    k = np.repeat(k, H // Hkv, axis=1)
    v = np.repeat(v, H // Hkv, axis=1)
    scores = np.einsum("bhtd,bhsd->bhts", q, k) * scale
    if causal:
        visible = np.arange(S)[None, :] <= (q_offset + np.arange(T))[:, None]
        scores = np.where(visible, scores, -np.inf)
    m = scores.max(axis=-1, keepdims=True)
    empty = ~np.isfinite(m)
    m = np.where(empty, 0.0, m)
    e = np.exp(scores - m)
    s = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        probs = np.where(empty, 0.0, e / s)
        lse = np.where(empty[..., 0], -np.inf, (m + np.log(s))[..., 0])
    if keep is not None:
        probs = probs * keep / (1.0 - p)
    return np.einsum("bhts,bhsd->bhtd", probs, v), lse, probs


def excess(actual, expected, atol, rtol):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    both_inf = np.isinf(actual) & np.isinf(expected) & (np.sign(actual) == np.sign(expected))
    diff = np.where(both_inf, 0.0, np.abs(actual - expected))
    bound = atol + rtol * np.where(np.isinf(expected), 0.0, np.abs(expected))
    return float(np.max(diff - bound)) if diff.size else 0.0


def check(case, z):
    c = case["config"]
    tol = case["tolerance"]
    f = {k: z[k].astype(np.float64) for k in z.files if z[k].dtype == np.float32}
    H, Hkv, dk, dv = c["num_heads"], c["num_kv_heads"], c["d_k"], c["d_v"]
    bias = lambda name: f[name] if name in f else 0.0
    q = heads(f["x_q"] @ f["w_q"] + bias("b_q"), H, dk)
    k_new = heads(f["x_kv"] @ f["w_k"] + bias("b_k"), Hkv, dk)
    v_new = heads(f["x_kv"] @ f["w_v"] + bias("b_v"), Hkv, dv)
    if "k_cache_in" in f:
        k = np.concatenate([f["k_cache_in"], k_new], axis=2)
        v = np.concatenate([f["v_cache_in"], v_new], axis=2)
    else:
        k, v = k_new, v_new
    keep = z["dropout_mask"].astype(np.float64) if "dropout_mask" in z.files else None

    def module(q, k, v):
        o, lse, probs = attend(q, k, v, c["scale"], c["causal"], c["q_offset"], keep, c["dropout_p"])
        B, _, T, _ = o.shape
        merged = o.transpose(0, 2, 1, 3).reshape(B, T, H * dv)
        return merged @ f["w_o"] + bias("b_o"), lse, probs

    out, lse, probs = module(q, k, v)
    checks = {"output": excess(z["output"], out, tol["atol"], tol["rtol"]),
              "lse": excess(z["lse"], lse, tol["atol"], tol["rtol"])}
    if "attn_weights" in z.files:
        checks["attn_weights"] = excess(z["attn_weights"], probs, tol["atol"], tol["rtol"])
    if "k_cache" in z.files:
        checks["k_cache"] = excess(z["k_cache"], k, tol["atol"], tol["rtol"])
        checks["v_cache"] = excess(z["v_cache"], v, tol["atol"], tol["rtol"])
    if "partial_outputs" in z.files:
        ends = np.cumsum(z["chunk_sizes"]) + c["t_past"]
        worst = -float("inf")
        for i, end in enumerate(ends):
            o_i, _, _ = module(q, k[:, :, :end], v[:, :, :end])
            worst = max(worst, excess(z["partial_outputs"][i], o_i, tol["atol"], tol["rtol"]))
        checks["partial_outputs"] = worst
    return checks


def main(directory):
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    for case in manifest["cases"]:
        z = np.load(os.path.join(directory, case["file"]), allow_pickle=False)
        shapes_ok = all(list(z[name].shape) == meta["shape"] and z[name].dtype.str == meta["dtype"]
                        for name, meta in case["arrays"].items())
        problems = [] if set(z.files) == set(case["arrays"]) else ["arrays differ from the manifest: %s" % sorted(set(z.files) ^ set(case["arrays"]))]
        try:
            checks = check(case, z)
        except Exception as e:  # report, do not hide
            checks, problems = {}, problems + ["%s: %s" % (type(e).__name__, e)]
        print(json.dumps({"name": case["name"], "shapes_ok": shapes_ok, "checks": checks, "problems": problems}))


if __name__ == "__main__":
    main(sys.argv[1])
