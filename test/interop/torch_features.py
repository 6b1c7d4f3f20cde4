"""Attention with the cache features, computed by torch in float32, for test/interop/torch-features.test.ts.

Usage: /usr/bin/python3 torch_features.py < cases.json > results.json
Input: {"cases": [{"name", "B", "H", "Hkv", "T", "S", "d", "q", "k", "v" (flat, [B,H,T,d] / [B,Hkv,S,d]),
        "scale", "causal", "q_offsets" ([B] absolute position of query 0), optional "window", "softcap",
        "alibi" ("bloom": + slope_h * s, or "distance": - slope_h * |t - s|), "sinks" ([H]),
        "kv_ranges" ([B,2] flat), "rope" ({"dim", "theta", "style": "half" | "interleaved"})}]}
Output: {"torch": version, "results": {name: {"out": flat [B,H,T,d], "angles": rope angle table or null}}}

Written the way the model code does it, in float32 throughout (no float64 anywhere):
- rotary: transformers' Llama / GPT-NeoX rotate_half (half) and GPT-J rotate_every_two
  (interleaved); inv_freq = 1 / theta ** (arange(0, dim, 2) / dim) and outer(pos, inv_freq) in
  float32; partial rotary rotates the first `dim` channels; keys at positions 0..S-1;
- ALiBi: Bloom's build_alibi_tensor slopes (get_alibi_slopes, also for a non-power-of-2 H);
- softcap: Gemma 2's cap * tanh(scores / cap) on the scaled scores;
- sliding window: a boolean mask (Mistral: t - W < s <= t);
- sinks: gpt-oss's sdpa (a sink logit column concatenated to the scores, softmax, column dropped);
- GQA: repeat_interleave of the key/value heads.
"""
import json
import math
import sys

import torch


def alibi_slopes(h):
    # transformers.models.bloom.modeling_bloom.build_alibi_tensor
    closest = 2 ** math.floor(math.log2(h))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != h:
        extra_base = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base ** (i + 1) for i in range(0, 2 * (h - closest), 2)]
    return torch.tensor(slopes, dtype=torch.float32)


def rotate(x, pos, rope):
    """x [B,heads,n,d] at positions pos [B,n] (int64); returns rotated x and the angle table."""
    dim, theta = rope["dim"], rope["theta"]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    max_pos = int(pos.max()) + 1
    table = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)  # [max_pos, dim/2]
    freqs = table[pos]  # [B,n,dim/2]
    rot, rest = x[..., :dim], x[..., dim:]
    if rope["style"] == "half":
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B,1,n,dim]
        cos, sin = emb.cos(), emb.sin()
        x1, x2 = rot[..., : dim // 2], rot[..., dim // 2:]
        rotated = rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    else:
        emb = torch.repeat_interleave(freqs, 2, dim=-1)[:, None]
        cos, sin = emb.cos(), emb.sin()
        x1, x2 = rot[..., ::2], rot[..., 1::2]
        rotated = rot * cos + torch.stack((-x2, x1), dim=-1).flatten(-2) * sin
    return torch.cat((rotated, rest), dim=-1), table


def attend(c):
    B, H, Hkv, T, S, d = c["B"], c["H"], c["Hkv"], c["T"], c["S"], c["d"]
    f32 = torch.float32
    q = torch.tensor(c["q"], dtype=f32).view(B, H, T, d)
    k = torch.tensor(c["k"], dtype=f32).view(B, Hkv, S, d)
    v = torch.tensor(c["v"], dtype=f32).view(B, Hkv, S, d)
    q_pos = torch.tensor(c["q_offsets"], dtype=torch.int64)[:, None] + torch.arange(T)[None, :]  # [B,T]
    k_pos = torch.arange(S).expand(B, S)
    angles = None
    if c.get("rope"):
        q, table = rotate(q, q_pos, c["rope"])
        k, table_k = rotate(k, k_pos, c["rope"])
        angles = (table if table.shape[0] >= table_k.shape[0] else table_k).flatten().tolist()
    k = k.repeat_interleave(H // Hkv, dim=1)
    v = v.repeat_interleave(H // Hkv, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * c["scale"]  # [B,H,T,S]
    if c.get("softcap"):
        cap = c["softcap"]
        scores = cap * torch.tanh(scores / cap)
    if c.get("alibi"):
        slopes = alibi_slopes(H)[None, :, None, None]
        if c["alibi"] == "bloom":
            scores = scores + slopes * k_pos[:, None, None, :].to(f32)
        else:
            dist = (q_pos[:, :, None] - k_pos[:, None, :]).abs().to(f32)[:, None]
            scores = scores - slopes * dist
    t_abs, s_abs = q_pos[:, None, :, None], k_pos[:, None, None, :]
    visible = torch.ones(B, 1, T, S, dtype=torch.bool)
    if c["causal"]:
        visible &= s_abs <= t_abs
    if c.get("window"):
        visible &= t_abs - c["window"] < s_abs
    if c.get("kv_ranges"):
        r = torch.tensor(c["kv_ranges"], dtype=torch.int64).view(B, 2)
        visible &= (s_abs >= r[:, 0, None, None, None]) & (s_abs < r[:, 1, None, None, None])
    scores = scores.masked_fill(~visible, float("-inf"))
    if c.get("sinks") is not None:
        # gpt-oss (gpt_oss/torch/model.py sdpa): S = cat([QK, sinks], -1); W = softmax(S)[..., :-1]
        sinks = torch.tensor(c["sinks"], dtype=f32).view(1, H, 1, 1).expand(B, H, T, 1)
        probs = torch.softmax(torch.cat((scores, sinks), dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v)
    return {"out": out.flatten().tolist(), "angles": angles}


def main():
    cases = json.load(sys.stdin)["cases"]
    torch.set_num_threads(1)
    with torch.no_grad():
        results = {c["name"]: attend(c) for c in cases}
    json.dump({"torch": torch.__version__, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
