"""Reads every fixture in a kvstream manifest with numpy and recomputes it independently.

Usage: python3 recompute.py DIR  ->  prints one JSON object per case:
  {"name", "shapes_ok", "checks": {array: max_excess}, "problems": [...]}
max_excess <= 0 means within the manifest's atol + rtol*|expected| (lse: atol alone); 1e308
stands for an infinite or NaN excess (JSON has neither). Follows
DESIGN semantics in float64: projections, grouped heads, causal mask at q_offset, dropout from the
stored mask, and, for chunked cases, the equivalence to one pass (prefix passes for
partial_outputs). The cache features of docs/fixtures.md are read from the config fields that a
case carries only when it uses them:
  rope {dim, theta, style} (+ rope_positions: q_positions [B,T], k_positions [B,S]), softcap,
  alibi_slopes (array alibi_slopes [H]), window, sink_tokens, head_sinks (array sinks [H]),
  kv_ranges (array [B,2]), q_offsets (array [B]), cache_dtype (fp16 '<f2', bf16 '<u2' bits,
  int8 '|i1' with k_scale / v_scale [B,H_kv,S,ceil(d/32)]), page_size (block_table),
  beam (beam_indices [steps,B]), rollback {after_chunk, accept, reject} (x_reject, draft_output),
  cache_positions (a ring's held positions, k_cache_held / v_cache_held).
All positions are absolute: query t of row b at q_offsets[b] (or q_offset) + t, key s at s.
"""
import json
import os
import sys

import numpy as np

F32_EPS = 2.0 ** -24
Q8_GROUP = 32


def heads(x, n, d):  # [B,T,n*d] -> [B,n,T,d]
    B, T, _ = x.shape
    return x.reshape(B, T, n, d).transpose(0, 2, 1, 3)


# --- storage dtypes -------------------------------------------------------------------------

def enc_f16(x):
    """fp32 -> IEEE binary16, round to nearest even (numpy's float32 -> float16 cast)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def bf16_bits(x):
    """fp32 -> bfloat16 bits (uint16), round to nearest even on the upper half."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits):
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def q8(x):
    """fp32 [..., d] -> (q int8 [..., d], scale fp32 [..., ceil(d/32)]): scale = fp32(max|x| / 127)
    per group of 32 channels, q = nearbyint(fp32(x / scale)) (ties to even), 0 where scale is 0."""
    x = np.asarray(x, dtype=np.float32)
    d = x.shape[-1]
    groups = -(-d // Q8_GROUP)
    pad = np.zeros(x.shape[:-1] + (groups * Q8_GROUP - d,), np.float32)
    g = np.concatenate([x, pad], axis=-1).reshape(x.shape[:-1] + (groups, Q8_GROUP))
    scale = (np.abs(g).max(axis=-1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale == 0, np.float32(1), scale)[..., None]
    q = np.where(scale[..., None] == 0, 0, np.clip(np.rint((g / safe).astype(np.float32)), -127, 127))
    return q.reshape(x.shape[:-1] + (groups * Q8_GROUP,))[..., :d].astype(np.int8), scale


def q8_value(q, scale):
    d = q.shape[-1]
    s = np.repeat(scale, Q8_GROUP, axis=-1)[..., :d]
    return (q.astype(np.float32) * s.astype(np.float32)).astype(np.float32).astype(np.float64)


def stored_value(a, dtype, scale=None):
    """A stored cache array as float64 values."""
    if dtype == "bf16":
        return bf16_value(a)
    if dtype == "int8":
        return q8_value(a, scale)
    return np.asarray(a).astype(np.float64)


def storage_bound(x, dtype):
    """|enc(x) - x| <= this, per element of x [..., d] (float64), for an encoder fed fp32(x)."""
    a = np.abs(x)
    if dtype == "fp16":
        return 2.0 ** -11 * a + 2.0 ** -25 + F32_EPS * a
    if dtype == "bf16":
        return (2.0 ** -8 + 2 * F32_EPS) * a + 2.0 ** -134
    if dtype == "int8":  # s(1/2 + u) + 2u|x|, s the group's scale (max|x| / 127, rounded up by u)
        d = x.shape[-1]
        groups = -(-d // Q8_GROUP)
        pad = np.zeros(x.shape[:-1] + (groups * Q8_GROUP - d,))
        mx = np.abs(np.concatenate([x, pad], axis=-1)).reshape(x.shape[:-1] + (groups, Q8_GROUP)).max(axis=-1)
        s = np.repeat(mx / 127 * (1 + F32_EPS), Q8_GROUP, axis=-1)[..., :d]
        return s * (0.5 + F32_EPS) + 3 * F32_EPS * a
    return F32_EPS * a


# --- rotary embeddings ----------------------------------------------------------------------

def rope(x, positions, dim, theta, style):
    """x [B,n,T,d] rotated at positions [B,T]: pair i turns by pos·theta^(-2i/dim); 'half' pairs
    (i, i + dim/2) (GPT-NeoX / Llama), 'interleaved' pairs (2i, 2i+1) (GPT-J); channels >= dim pass."""
    half = dim // 2
    inv = theta ** (-(2.0 * np.arange(half)) / dim)
    ang = positions[:, None, :, None].astype(np.float64) * inv  # [B,1,T,half]
    c, s = np.cos(ang), np.sin(ang)
    out = x.copy()
    if style == "interleaved":
        i1, i2 = np.arange(half) * 2, np.arange(half) * 2 + 1
    else:
        i1, i2 = np.arange(half), np.arange(half) + half
    x1, x2 = x[..., i1], x[..., i2]
    out[..., i1] = x1 * c - x2 * s
    out[..., i2] = x2 * c + x1 * s
    return out


# --- attention ------------------------------------------------------------------------------

def attend(q, k, v, scale, tpos, kpos, f, keep=None, p=0.0):
    """q [B,H,T,dk], k [B,Hkv,S,dk], v [B,Hkv,S,dv]; tpos [B,T], kpos [B,S] absolute positions;
    f: the case's features -> out [B,H,T,dv], lse [B,H,T], probs [B,H,T,S]."""
    B, H, T, _ = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    k = np.repeat(k, H // Hkv, axis=1)
    v = np.repeat(v, H // Hkv, axis=1)
    scores = np.einsum("bhtd,bhsd->bhts", q, k) * scale
    if f["softcap"]:
        scores = f["softcap"] * np.tanh(scores / f["softcap"])
    dist = np.abs(tpos[:, None, :, None] - kpos[:, None, None, :]).astype(np.float64)  # [B,1,T,S]
    if f["alibi"] is not None:
        scores = scores - f["alibi"][None, :, None, None] * dist
    visible = np.ones((B, 1, T, S), bool)
    tp, kp = tpos[:, None, :, None], kpos[:, None, None, :]
    if f["causal"]:
        visible &= kp <= tp
    if f["window"]:
        visible &= (tp - f["window"] < kp) | (kp < f["sink_tokens"])
    if f["kv_ranges"] is not None:
        r = f["kv_ranges"]
        visible &= (r[:, 0][:, None, None, None] <= kp) & (kp < r[:, 1][:, None, None, None])
    scores = np.where(visible, scores, -np.inf)
    m = scores.max(axis=-1, keepdims=True)
    sink = None
    if f["sinks"] is not None:
        sink = np.broadcast_to(f["sinks"][None, :, None, None], m.shape)
        m = np.maximum(m, sink)
    empty = ~np.isfinite(m)
    m = np.where(empty, 0.0, m)
    e = np.exp(scores - m)
    s = e.sum(axis=-1, keepdims=True)
    if sink is not None:
        s = s + np.exp(sink - m)
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
    with np.errstate(invalid="ignore"):
        diff = np.where(both_inf, 0.0, np.abs(actual - expected))
    bound = atol + rtol * np.where(np.isinf(expected), 0.0, np.abs(expected))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(np.max(diff - bound)) if diff.size else 0.0


def features(c, z):
    """The case's feature settings (absent fields: off)."""
    arr = lambda name: z[name].astype(np.float64) if name in z.files else None
    alibi = c.get("alibi_slopes")
    alibi = np.asarray(alibi, np.float64) if isinstance(alibi, list) else (arr("alibi_slopes") if alibi else None)
    return {
        "causal": c["causal"],
        "softcap": c.get("softcap") or 0.0,
        "alibi": alibi,
        "window": c.get("window") or 0,
        "sink_tokens": c.get("sink_tokens") or 0,
        "sinks": arr("sinks") if c.get("head_sinks") else None,
        "kv_ranges": z["kv_ranges"].astype(np.int64) if c.get("kv_ranges") else None,
        "q_offsets": z["q_offsets"].astype(np.int64) if c.get("q_offsets") else None,
        "rope": c.get("rope"),
        "dtype": c.get("cache_dtype") or "fp32",
    }


def check(case, z):
    c = case["config"]
    tol = case["tolerance"]
    atol, rtol = tol["atol"], tol["rtol"]
    f = {k: z[k].astype(np.float64) for k in z.files if z[k].dtype == np.float32}
    ft = features(c, z)
    H, Hkv, dk, dv = c["num_heads"], c["num_kv_heads"], c["d_k"], c["d_v"]
    B, T, P, N = c["batch"], c["t_q"], c["t_past"], c["t_kv"]
    S = P + N
    bias = lambda name: f[name] if name in f else 0.0
    # Absolute positions: queries (mask and default rope ids), keys.
    q0 = ft["q_offsets"] if ft["q_offsets"] is not None else np.full(B, c["q_offset"])
    tpos = q0[:, None] + np.arange(T)[None, :]
    kpos = np.broadcast_to(np.arange(S)[None, :], (B, S))
    q = heads(f["x_q"] @ f["w_q"] + bias("b_q"), H, dk)
    k_new = heads(f["x_kv"] @ f["w_k"] + bias("b_k"), Hkv, dk)
    v_new = heads(f["x_kv"] @ f["w_v"] + bias("b_v"), Hkv, dv)
    r = ft["rope"]
    if r:
        q_ids = z["q_positions"].astype(np.int64) if c.get("rope_positions") else tpos
        k_ids = z["k_positions"].astype(np.int64) if c.get("rope_positions") else kpos
        q = rope(q, q_ids, r["dim"], r["theta"], r["style"])
        k_new = rope(k_new, k_ids[:, P:], r["dim"], r["theta"], r["style"])  # cache in: rotated already
    dtype = ft["dtype"]
    if "k_cache_in" in z.files:
        # the cache in is fp32, as appended (a storage-dtype cache encodes it with the new keys)
        k = np.concatenate([f["k_cache_in"], k_new], axis=2)
        v = np.concatenate([f["v_cache_in"], v_new], axis=2)
    else:
        k, v = k_new, v_new
    keep = z["dropout_mask"].astype(np.float64) if "dropout_mask" in z.files else None
    checks = {}
    held = z["cache_positions"].astype(np.int64) if "cache_positions" in z.files else np.arange(S)
    if dtype != "fp32":
        # The stored cache is the truth the kernels read: within one storage rounding (plus the
        # case's tolerance on the fp32 projection) of the float64 keys; attention reads it.
        ks = stored_value(z["k_cache"], dtype, z["k_scale"] if dtype == "int8" else None)
        vs = stored_value(z["v_cache"], dtype, z["v_scale"] if dtype == "int8" else None)
        for name, got, want in (("k_cache", ks, k[:, :, held]), ("v_cache", vs, v[:, :, held])):
            proj = atol + rtol * np.abs(want)
            bound = 1.01 * (storage_bound(want, dtype) + proj) + proj
            checks[name] = float(np.max(np.abs(got - want) - bound))
        if dtype == "int8":
            for name, want in (("k_scale", k[:, :, held]), ("v_scale", v[:, :, held])):
                _, s_want = q8(want)
                # fp32(max|x̃| / 127) with |x̃ - x| <= atol + rtol|x|: (atol + rtol·max)/127 and two roundings
                checks[name] = excess(z[name], s_want, atol / 127, rtol + 4 * F32_EPS)
        k, v = ks, vs

    def module(q, k, v, tpos, kpos, keep):
        o, lse, probs = attend(q, k, v, c["scale"], tpos, kpos, ft, keep, c["dropout_p"])
        Bo, _, To, _ = o.shape
        merged = o.transpose(0, 2, 1, 3).reshape(Bo, To, H * dv)
        return merged @ f["w_o"] + bias("b_o"), lse, probs

    if c.get("beam"):
        return check_beam(c, z, f, ft, q, k, v, module, tol, checks)

    out, lse, probs = module(q, k, v, tpos, kpos, keep)
    checks["output"] = excess(z["output"], out, atol, rtol)
    checks["lse"] = excess(z["lse"], lse, atol, 0.0)
    if "attn_weights" in z.files:
        checks["attn_weights"] = excess(z["attn_weights"], probs, atol, rtol)
    if "k_cache" in z.files and dtype == "fp32":
        checks["k_cache"] = excess(z["k_cache"], k, atol, rtol)
        checks["v_cache"] = excess(z["v_cache"], v, atol, rtol)
    if "k_cache_held" in z.files:  # a ring's held positions
        checks["k_cache_held"] = excess(z["k_cache_held"], k[:, :, held], atol, rtol)
        checks["v_cache_held"] = excess(z["v_cache_held"], v[:, :, held], atol, rtol)
    if "partial_outputs" in z.files:
        ends = np.cumsum(z["chunk_sizes"]) + P
        worst = -float("inf")
        for i, end in enumerate(ends):
            o_i, _, _ = module(q, k[:, :, :end], v[:, :, :end], tpos, kpos[:, :end], keep[..., :end] if keep is not None else None)
            worst = max(worst, excess(z["partial_outputs"][i], o_i, atol, rtol))
        checks["partial_outputs"] = worst
    if c.get("rollback"):
        checks["draft_output"] = check_draft(c, z, f, ft, k, v, module, atol, rtol)
    if c.get("page_size"):
        checks["block_table"] = check_pages(c, z)
    return checks


def check_draft(c, z, f, ft, k, v, module, atol, rtol):
    """Speculative decoding: after chunk `after_chunk` (position L) the draft (the next `accept`
    tokens of x_kv, then x_reject) was appended and attended, then the cache cropped to L + accept.
    draft_output is that pass: the draft's queries over keys [0, L) and the draft itself."""
    rb = c["rollback"]
    H, Hkv, dk, dv, B = c["num_heads"], c["num_kv_heads"], c["d_k"], c["d_v"], c["batch"]
    L = c["t_past"] + int(np.sum(z["chunk_sizes"][: rb["after_chunk"] + 1]))
    x = np.concatenate([f["x_kv"][:, L - c["t_past"]: L - c["t_past"] + rb["accept"]], f["x_reject"]], axis=1)
    n = x.shape[1]
    bias = lambda name: f[name] if name in f else 0.0
    pos = np.broadcast_to(L + np.arange(n)[None, :], (B, n))
    qd = heads(x @ f["w_q"] + bias("b_q"), H, dk)
    kd = heads(x @ f["w_k"] + bias("b_k"), Hkv, dk)
    vd = heads(x @ f["w_v"] + bias("b_v"), Hkv, dv)
    if ft["rope"]:
        r = ft["rope"]
        qd, kd = rope(qd, pos, r["dim"], r["theta"], r["style"]), rope(kd, pos, r["dim"], r["theta"], r["style"])
    kk = np.concatenate([k[:, :, :L], kd], axis=2)
    vv = np.concatenate([v[:, :, :L], vd], axis=2)
    kpos = np.broadcast_to(np.arange(L + n)[None, :], (B, L + n))
    o, _, _ = module(qd, kk, vv, pos, kpos, None)
    return excess(z["draft_output"], o, atol, rtol)


def check_beam(c, z, f, ft, q, k, v, module, tol, checks):
    """Beam decode: step i appends token i of every row and attends with it (query i at
    t_past + i), then the cache's rows are reordered: row b <- row beam_indices[i, b]. The
    output of step i is row b's as the step saw it."""
    atol, rtol = tol["atol"], tol["rtol"]
    P, N, B = c["t_past"], c["t_kv"], c["batch"]
    idx = z["beam_indices"].astype(np.int64)
    hk, hv = k[:, :, :P], v[:, :, :P]
    outs, lses = [], []
    for i in range(N):
        hk = np.concatenate([hk, k[:, :, P + i: P + i + 1]], axis=2)
        hv = np.concatenate([hv, v[:, :, P + i: P + i + 1]], axis=2)
        tpos = np.full((B, 1), P + i)
        kpos = np.broadcast_to(np.arange(P + i + 1)[None, :], (B, P + i + 1))
        o, lse, _ = module(q[:, :, i: i + 1], hk, hv, tpos, kpos, None)
        outs.append(o)
        lses.append(lse)
        hk, hv = hk[idx[i]], hv[idx[i]]
    checks["output"] = excess(z["output"], np.concatenate(outs, axis=1), atol, rtol)
    checks["lse"] = excess(z["lse"], np.concatenate(lses, axis=2), atol, 0.0)
    if "k_cache" in z.files and ft["dtype"] == "fp32":
        checks["k_cache"] = excess(z["k_cache"], hk, atol, rtol)
        checks["v_cache"] = excess(z["v_cache"], hv, atol, rtol)
    return checks


def check_pages(c, z):
    """Paged storage: the block table [B, blocks] gives every row distinct pages for its own
    positions, and rows share the pages of the common prefix (t_past // page_size full pages).
    Returns 0 when it holds, 1 otherwise (an excess)."""
    t = z["block_table"].astype(np.int64)
    P, S = c["page_size"], c["t_past"] + c["t_kv"]
    used = -(-S // P)
    shared = c["t_past"] // P
    ok = bool(np.all(t[:, :used] >= 0))
    ok &= bool(np.all(t[:, :shared] == t[:1, :shared]))
    own = t[:, shared:used].ravel()
    ok &= len(set(own.tolist())) == own.size and not (set(own.tolist()) & set(t[0, :shared].tolist()))
    return 0.0 if ok else 1.0


def main(directory):
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    for case in manifest["cases"]:
        z = np.load(os.path.join(directory, case["file"]), allow_pickle=False)
        shapes_ok = all(list(z[name].shape) == meta["shape"] and meta["dtype"] in (z[name].dtype.str, "bfloat16" if z[name].dtype.str == "<u2" else None)
                        for name, meta in case["arrays"].items())
        problems = [] if set(z.files) == set(case["arrays"]) else ["arrays differ from the manifest: %s" % sorted(set(z.files) ^ set(case["arrays"]))]
        try:
            checks = check(case, z)
        except Exception as e:  # report, do not hide
            checks, problems = {}, problems + ["%s: %s" % (type(e).__name__, e)]
        # JSON has no inf or NaN: an unbounded or undefined excess is written as 1e308.
        checks = {k: (v if np.isfinite(v) else 1e308) for k, v in checks.items()}
        print(json.dumps({"name": case["name"], "shapes_ok": shapes_ok, "checks": checks, "problems": problems}))


if __name__ == "__main__":
    main(sys.argv[1])
