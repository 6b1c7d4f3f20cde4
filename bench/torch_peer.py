"""PyTorch peer for `npm run bench`: a long-running process that times one repetition per request.

stdin, one JSON object per line: {"workload": "W1-core", "mask": "none"|"causal", "threads": 1}
  optional: "cache": "fp32"|"bf16"|"fp16" (W3: the cache tensors' dtype), "steps": N (W3, W6:
  decode steps, default 256), "rope": true (W2: rotary on q and k, as transformers' Llama does)
stdout: {"ready": true} once torch is imported, then one JSON object per request:
  {"ms": <this repetition's wall time in ms per unit>} or {"error": "..."}
Shapes follow bench/run.ts (fp32, batch 1 unless said, 8 heads, d_k = d_v = 64, d_model 512).
Run with `torch.inference_mode()`; decode writes into a preallocated cache.
W6 = decode over a 32k stream with window 4096: a ring of exactly 4096 slots (slot = pos % 4096),
each query attends to every slot (for one query over a ring of W slots the window mask hides
nothing), so only the window is read.
Half-width caches: the cache tensors and the query are cast to the cache dtype and attention runs in
it (matmul, softmax, matmul); the result is cast back for the fp32 output projection. torch 1.13's
CPU matmul has no fp16 kernel ("addmm_impl_cpu_" not implemented for 'Half'): fp16 reports that error.
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

H, D, DM = 8, 64, 512
SDPA = getattr(F, "scaled_dot_product_attention", None)


def attend(q, k, v, causal, q_offset=0):
    """q [B,H,T,D], k/v [B,H,S,D]; causal with query t at absolute q_offset + t."""
    T, S = q.shape[2], k.shape[2]
    if SDPA is not None and (not causal or q_offset == 0 and T == S):
        return SDPA(q, k, v, is_causal=causal)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        t = torch.arange(T).unsqueeze(1) + q_offset
        s = torch.arange(S).unsqueeze(0)
        scores = scores.masked_fill(s > t, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class Module:
    def __init__(self, d_model=DM, heads=H, d=D):
        g = torch.Generator().manual_seed(0)
        self.h, self.d = heads, d
        self.wq, self.wk, self.wv, self.wo = (torch.randn(d_model, heads * d, generator=g) / math.sqrt(d_model) for _ in range(4))
        self.bq, self.bk, self.bv, self.bo = (torch.randn(heads * d, generator=g) * 0.01 for _ in range(4))

    def heads(self, x):
        B, T, _ = x.shape
        return x.view(B, T, self.h, self.d).transpose(1, 2)

    def project(self, x):
        return (self.heads(torch.addmm(self.bq, x.flatten(0, 1), self.wq).view(x.shape[0], x.shape[1], -1)),
                self.heads(torch.addmm(self.bk, x.flatten(0, 1), self.wk).view(x.shape[0], x.shape[1], -1)),
                self.heads(torch.addmm(self.bv, x.flatten(0, 1), self.wv).view(x.shape[0], x.shape[1], -1)))

    def out(self, o):
        B, _, T, _ = o.shape
        return torch.addmm(self.bo, o.transpose(1, 2).reshape(B * T, -1), self.wo).view(B, T, -1)

    def forward(self, x, causal):
        q, k, v = self.project(x)
        return self.out(attend(q, k, v, causal))


def rope_tables(positions, d=D, theta=10000.0):
    """cos, sin [T, d] for the half-split (GPT-NeoX / Llama) layout, computed per call as transformers does."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


def make(workload, mask, cache_dtype="fp32", steps=256, rope=False):
    """A function running one repetition, and how many units it covers (steps or calls)."""
    causal = mask == "causal"
    g = torch.Generator().manual_seed(1)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cache_dtype]
    if workload == "W1-core":
        q, k, v = (torch.randn(1, H, 2048, D, generator=g) for _ in range(3))
        return (lambda: attend(q, k, v, causal)), 1
    if workload == "W1-module":
        m, x = Module(), torch.randn(1, 2048, DM, generator=g)
        return (lambda: m.forward(x, causal)), 1
    if workload == "W2":
        m, x = Module(), torch.randn(1, 2048, DM, generator=g)
        kc, vc = torch.empty(1, H, 2048, D), torch.empty(1, H, 2048, D)

        def prefill():
            outs = []
            for s0 in range(0, 2048, 256):
                q, k, v = m.project(x[:, s0:s0 + 256])
                if rope:
                    cos, sin = rope_tables(torch.arange(s0, s0 + 256))
                    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
                kc[:, :, s0:s0 + 256], vc[:, :, s0:s0 + 256] = k, v
                outs.append(m.out(attend(q, kc[:, :, :s0 + 256], vc[:, :, :s0 + 256], True, s0)))
            return torch.cat(outs, 1)
        return prefill, 1
    if workload in ("W3-b1", "W3-b16"):
        B = 1 if workload == "W3-b1" else 16
        m = Module()
        kc, vc = (torch.randn(B, H, 4096 + steps, D, generator=g).to(dt) for _ in range(2))
        xs = torch.randn(steps, B, 1, DM, generator=g)

        def decode():
            for i in range(steps):
                pos = 4096 + i
                q, k, v = m.project(xs[i])
                kc[:, :, pos:pos + 1], vc[:, :, pos:pos + 1] = k, v
                m.out(attend(q.to(dt), kc[:, :, :pos + 1], vc[:, :, :pos + 1], False).float())
        return decode, steps
    if workload == "W6":
        W, stream = 4096, 32768
        m = Module()
        kc, vc = torch.randn(1, H, W, D, generator=g), torch.randn(1, H, W, D, generator=g)  # positions stream - W .. stream - 1
        xs = torch.randn(steps, 1, 1, DM, generator=g)

        def decode():
            for i in range(steps):
                slot = (stream + i) % W
                q, k, v = m.project(xs[i])
                kc[:, :, slot:slot + 1], vc[:, :, slot:slot + 1] = k, v
                m.out(attend(q, kc, vc, False))
        return decode, steps
    if workload == "W4":
        m, x = Module(d_model=32, heads=4, d=8), torch.randn(2, 8, 32, generator=g)

        def calls():
            for _ in range(1000):
                m.forward(x, False)
        return calls, 1000
    raise ValueError("unknown workload " + workload)


def main():
    cache = {}
    print(json.dumps({"ready": True}), flush=True)  # torch is imported: timing may start
    for line in sys.stdin:
        req = json.loads(line)
        try:
            torch.set_num_threads(int(req["threads"]))
            key = (req["workload"], req["mask"], req.get("cache", "fp32"), int(req.get("steps", 256)), bool(req.get("rope", False)))
            if key not in cache:
                fn, units = make(*key)
                with torch.inference_mode():
                    fn()  # warm-up
                cache[key] = (fn, units)
            fn, units = cache[key]
            with torch.inference_mode():
                t0 = time.perf_counter()
                fn()
                ms = (time.perf_counter() - t0) * 1e3
            print(json.dumps({"ms": ms / units}), flush=True)
        except Exception as e:  # report and go on
            print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}), flush=True)


if __name__ == "__main__":
    main()
