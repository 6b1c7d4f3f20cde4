// Decode over fp16, bf16 and int8 KV caches against fp32 (issue 10), at the W3 shapes of
// bench/run.ts (H = H_kv = 8, d = 64, a 4096-token prompt, then decode steps of one token):
// attnUpdate + attnFinalize per step, the binding alone on preallocated buffers. --group N
// decodes 8·N query heads over the 8 kv heads (grouped-query attention, as Llama's and Mistral's).
//
// Each row gives ms/step, the ratio to the fp32 step, and the ratio to the "floor": the fp32
// kernel over as many keys as make the same bytes (S · bytes(dtype) / bytes(fp32)), i.e. a read
// of the same bytes by the fp32 path measured in the same run. Wall and process CPU time both:
// on a shared machine the CPU time is the steadier of the two (at 1 thread).
//
//   tsx bench/kvdtype.ts [--threads 1,2] [--batch 1,16] [--steps 64] [--reps 7] [--dtypes f32,f16,bf16,i8]
//                        [--d 64] [--prompt 4096] [--group 1]   (other head widths, cache lengths, query heads per kv head)
//   KVSTREAM_ADDON=<path> loads another build of the addon.
import { parseArgs } from 'node:util';
import { f32ToBf16, f32ToF16 } from '../src/io/npy.ts';
import { addon, setNumThreads } from '../src/native.ts';
import type { KvDtype, KvStorage } from '../src/native.ts';
import { Rng } from '../src/random.ts';

const { values: args } = parseArgs({
  options: {
    threads: { type: 'string', default: '1,2' },
    batch: { type: 'string', default: '1,16' },
    steps: { type: 'string', default: '64' },
    reps: { type: 'string', default: '7' },
    dtypes: { type: 'string', default: 'f32,f16,bf16,i8' },
    d: { type: 'string', default: '64' },
    prompt: { type: 'string', default: '4096' },
    group: { type: 'string', default: '1' },
  },
});
const THREADS = args.threads!.split(',').map(Number);
const BATCHES = args.batch!.split(',').map(Number);
const STEPS = Number(args.steps), REPS = Number(args.reps);
const DTYPES = args.dtypes!.split(',') as KvDtype[];
const [H, D, P, GROUP] = [8, Number(args.d), Number(args.prompt), Number(args.group)];  // H: kv heads
const G = Math.ceil(D / 32);

/** Bytes one key of one head takes in k and v (int8: values and fp32 scales). */
const keyBytes = (dt: KvDtype) => 2 * (dt === 'f32' ? 4 * D : dt === 'i8' ? D + 4 * G : 2 * D);

/** x [rows, D] -> int8 and scales [rows, G]: symmetric, one scale per row and 32 channels. */
function quantizeQ8(x: Float32Array): { q: Int8Array; scale: Float32Array } {
  const rows = x.length / D, q = new Int8Array(x.length), scale = new Float32Array(rows * G);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < G; g++) {
      const c0 = r * D + g * 32, c1 = Math.min(r * D + D, c0 + 32);
      let max = 0;
      for (let c = c0; c < c1; c++) max = Math.max(max, Math.abs(x[c]!));
      const s = Math.fround(max / 127);
      scale[r * G + g] = s;
      if (s > 0) for (let c = c0; c < c1; c++) q[c] = Math.round(x[c]! / s);
    }
  return { q, scale };
}

interface Store { k: KvStorage; v: KvStorage; ks: Float32Array | null; vs: Float32Array | null }

function encode(dt: KvDtype, k: Float32Array, v: Float32Array): Store {
  if (dt === 'f32') return { k, v, ks: null, vs: null };
  if (dt === 'f16') return { k: f32ToF16(k), v: f32ToF16(v), ks: null, vs: null };
  if (dt === 'bf16') return { k: f32ToBf16(k), v: f32ToBf16(v), ks: null, vs: null };
  const kq = quantizeQ8(k), vq = quantizeQ8(v);
  return { k: kq.q, v: vq.q, ks: kq.scale, vs: vq.scale };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

for (const B of BATCHES) {
  const cap = P + STEPS, rng = new Rng(7);
  const k = rng.normalTensor([B, H, cap, D]).data, v = rng.normalTensor([B, H, cap, D]).data;
  const stores = new Map(DTYPES.map((dt) => [dt, encode(dt, k, v)]));
  if (!stores.has('f32')) stores.set('f32', encode('f32', k, v));
  const qs = Array.from({ length: STEPS }, () => rng.normalTensor([B, H * GROUP, 1, D]).data);
  const rows = B * H * GROUP, m = new Float32Array(rows), l = new Float32Array(rows), acc = new Float32Array(rows * D), lse = new Float32Array(rows);
  /** One decode loop of STEPS steps over `dt` storage, keys [0, S) at step t with S = P + t + 1; bytes: S scaled by `frac` (the floor rows). */
  const loop = (dt: KvDtype, frac = 1) => {
    const s = stores.get(dt)!;
    const c0 = process.cpuUsage(), t0 = performance.now();
    for (let t = 0; t < STEPS; t++) {
      const S = Math.round((P + t + 1) * frac);
      m.fill(-Infinity);
      l.fill(0);
      acc.fill(0);
      addon.attnUpdate({ B, H: H * GROUP, Hkv: H, T: 1, S, sCap: cap, dK: D, dV: D },
        { scale: 1 / Math.sqrt(D), causal: true, qOffset: S - 1, sOffset: 0, dropoutP: 0, seed: 0, kvDtype: dt },
        qs[t]!, s.k, s.v, m, l, acc, s.ks, s.vs);
      addon.attnFinalize(rows, D, m, l, acc, acc, lse);
    }
    const c = process.cpuUsage(c0);
    return { wall: (performance.now() - t0) / STEPS, cpu: (c.user + c.system) / 1e3 / STEPS };
  };
  for (const threads of THREADS) {
    setNumThreads(threads);
    const cases = DTYPES.flatMap((dt): { dt: KvDtype; floor: boolean }[] => (dt === 'f32' ? [{ dt, floor: false }] : [{ dt, floor: false }, { dt, floor: true }]));
    const key = (c: { dt: KvDtype; floor: boolean }) => `${c.dt}${c.floor ? ' floor' : ''}`;
    const wall = new Map(cases.map((c) => [key(c), [] as number[]])), cpu = new Map(cases.map((c) => [key(c), [] as number[]]));
    for (const c of cases) loop(c.dt); // warm-up
    for (let r = 0; r < REPS; r++)
      for (const c of cases) {
        const x = c.floor ? loop('f32', keyBytes(c.dt) / keyBytes('f32')) : loop(c.dt);
        wall.get(key(c))!.push(x.wall);
        cpu.get(key(c))!.push(x.cpu);
      }
    const MB = (dt: KvDtype) => (B * H * (P + STEPS / 2) * keyBytes(dt)) / 1e6;
    console.log(`W3-b${B} (B ${B}, H ${H * GROUP}${GROUP > 1 ? ` over ${H} kv heads` : ''}, d ${D}, S ${P + 1}..${P + STEPS}), ${threads} thread${threads > 1 ? 's' : ''}, median of ${REPS} x ${STEPS} steps` +
      ' (cpu: process CPU time per step, all threads)');
    const f32 = { wall: median(wall.get('f32') ?? [NaN]), cpu: median(cpu.get('f32') ?? [NaN]) };
    for (const dt of DTYPES) {
      const w = median(wall.get(dt)!), c = median(cpu.get(dt)!);
      const fw = dt === 'f32' ? w : median(wall.get(`${dt} floor`)!), fc = dt === 'f32' ? c : median(cpu.get(`${dt} floor`)!);
      console.log(`  ${dt.padEnd(4)} ${(MB(dt)).toFixed(1).padStart(6)} MB  wall ${w.toFixed(3)} ms/step ${(w / f32.wall).toFixed(2)}x fp32, ` +
        `${(MB(dt) / w).toFixed(1)} GB/s, ${(w / fw).toFixed(2)}x floor  |  cpu ${c.toFixed(3)} ms/step ${(c / f32.cpu).toFixed(2)}x fp32, ${(c / fc).toFixed(2)}x floor`);
    }
  }
}
