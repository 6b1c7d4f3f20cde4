# Loads a kvstream fixture with numpy, checks it against the manifest, and recomputes its output
# in float64 from the stored inputs and weights (non-causal, no cache, no dropout cases).
# python3 consumers/examples/load_fixture.py fixtures basic_self_attn_small
import hashlib, json, sys
import numpy as np

def load_fixture(folder, name):
    manifest = json.load(open(f'{folder}/manifest.json'))
    entry = next(c for c in manifest['cases'] if c['name'] == name)
    path = f"{folder}/{entry['file']}"
    digest = hashlib.sha256(open(path, 'rb').read()).hexdigest()
    assert digest == entry['sha256'], f'{path}: sha256 {digest} != manifest {entry["sha256"]}'
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for k, spec in entry['arrays'].items():
        a = arrays[k]
        assert (list(a.shape), a.dtype.str) == (spec['shape'], spec['dtype']), f'{path}:{k}'
    return entry, arrays

def attention_output(c, a):
    """x_q [B,T,d_model], x_kv [B,S,d_kv_in] -> output [B,T,d_out], in float64."""
    f = lambda k: a[k].astype(np.float64)
    bias = lambda k: f(k) if c['bias'] else 0.0
    B, T, S, H, Hkv = c['batch'], c['t_q'], c['t_kv'], c['num_heads'], c['num_kv_heads']
    q = (f('x_q') @ f('w_q') + bias('b_q')).reshape(B, T, H, c['d_k']).transpose(0, 2, 1, 3)
    k = (f('x_kv') @ f('w_k') + bias('b_k')).reshape(B, S, Hkv, c['d_k']).transpose(0, 2, 1, 3)
    v = (f('x_kv') @ f('w_v') + bias('b_v')).reshape(B, S, Hkv, c['d_v']).transpose(0, 2, 1, 3)
    k, v = np.repeat(k, H // Hkv, axis=1), np.repeat(v, H // Hkv, axis=1)  # head h reads h // (H/Hkv)
    s = q @ k.transpose(0, 1, 3, 2) * c['scale']
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, H * c['d_v'])
    return o @ f('w_o') + bias('b_o')

if __name__ == '__main__':
    folder, name = sys.argv[1], sys.argv[2]
    entry, arrays = load_fixture(folder, name)
    c, tol = entry['config'], entry['tolerance']
    assert not c['causal'] and c['t_past'] == 0 and c['dropout_p'] == 0, 'this example covers plain attention only'
    want = attention_output(c, arrays)
    diff = np.abs(arrays['output'] - want)
    ok = bool(np.all(diff <= tol['atol'] + tol['rtol'] * np.abs(want)))
    print(f"{name}: {len(arrays)} arrays, output {list(want.shape)}, max |stored - float64| {diff.max():.3e} "
          f"at {[int(i) for i in np.unravel_index(diff.argmax(), diff.shape)]}, {'within' if ok else 'OUTSIDE'} "
          f"atol {tol['atol']} + rtol {tol['rtol']}")
    sys.exit(0 if ok else 1)
