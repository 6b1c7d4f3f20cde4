// One fuzz call from (seed, call index): which export or public API entry point, and arguments
// that are valid, valid in an unusual form (subarray, shared, resizable, other realm), or bad
// (wrong type, size, count; NaN, huge, negative; Proxies, throwing getters, detached buffers,
// getters with side effects). Deterministic in (seed, index) alone, so `--replay S:i` is exact.
import { types } from 'node:util';
import { lastValueFrom, toArray } from 'rxjs';
import type * as Kv from '../src/index.ts';
import type * as Streams from '../src/streams/index.ts';
import { badF32, badI32, badInt, badNumber, badString, badU8, detach, f32, FuzzTrap, Gen, object, scalar, storage, u8, viewD } from './values.ts';
import type { KvDtype, V } from './values.ts';

export type Fn = (...a: unknown[]) => unknown;

/** What a call may use: the raw addon, the public API, and gc (node --expose-gc). */
export interface Api {
  binding: Record<string, Fn>;
  kv: typeof Kv;
  /** src/streams (fromTokens, fromNpyBytes), when present. */
  streams?: typeof Streams;
  gc?: () => void;
  /** Kernel paths setKernelPath accepts here (valid ones; tile only with AVX-512). */
  paths: string[];
}

export interface Call {
  /** Export or API entry point, e.g. 'attnUpdate' or 'api.attention'. */
  target: string;
  /** Arguments summary for reports. */
  d: string;
  run(): unknown;
  /** The call may change the thread count or kernel path (the worker restores them after). */
  state?: boolean;
}

// ---- slots: one argument position of an export ---------------------------------------------

interface Slot {
  name: string;
  ok(g: Gen): V;
  bad(g: Gen): V;
}
interface Ctx {
  api: Api;
  /** The call's final arguments, for getters whose side effect touches another argument. */
  args: unknown[];
  state: boolean;
  /** The typed arrays in opts (alibi, kvRanges, qOffsets, blockTable), for getters that detach them. */
  optArrays?: ArrayBufferView[];
}

const intSlot = (name: string, valid: number): Slot => ({ name, ok: () => ({ v: valid, d: String(valid) }), bad: (g) => badInt(g, valid) });
const f32Slot = (name: string, n: number, nullable = false): Slot => ({
  name,
  ok: (g) => (nullable && g.chance(0.3) ? { v: null, d: 'null' } : f32(g, n)),
  bad: (g) => badF32(g, n),
});
const u8Slot = (name: string, n: number): Slot => ({ name, ok: (g) => (g.chance(0.4) ? { v: null, d: 'null' } : u8(g, n)), bad: (g) => badU8(g, n) });

type Field = number | boolean | string | ArrayBufferView;
const fieldD = (v: Field) => (typeof v === 'string' ? `'${v}'` : ArrayBuffer.isView(v) ? viewD(v) : String(v));

function objSlot(name: string, fields: Record<string, Field>, ctx: Ctx, badField: (g: Gen, k: string, v: Field) => V): Slot {
  const okFields = (): Record<string, V> => Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, { v, d: fieldD(v) }]));
  return {
    name,
    ok: () => {
      const f = okFields();
      return { v: Object.fromEntries(Object.entries(f).map(([k, x]) => [k, x.v])), d: `{${Object.entries(f).map(([k, x]) => `${k}:${x.d}`).join(',')}}` };
    },
    bad: (g) => {
      const f = okFields();
      const keys = Object.keys(f);
      for (let n = g.chance(0.5) ? g.range(1, 2) : 0; n > 0; n--) {
        const k = g.pick(keys);
        f[k] = badField(g, k, fields[k]);
      }
      return object(g, f, (g2) => sideEffect(g2, ctx));
    },
  };
}

/** A getter side effect: detach or shrink another argument's buffer, re-enter the addon, set threads, gc. */
function sideEffect(g: Gen, ctx: Ctx): V | undefined {
  const { binding } = ctx.api;
  switch (g.int(ctx.optArrays?.length ? 8 : 6)) {
    case 6: case 7: {
      // The binding copies the option arrays; detaching or overwriting them mid-read must not matter.
      const arrs = ctx.optArrays!;
      return g.chance(0.5)
        ? { v: () => { for (const a of arrs) detach(a.buffer); }, d: 'detaches the opts arrays' }
        : { v: () => { for (const a of arrs) if (a instanceof Int32Array) a.fill(2 ** 31 - 1); else if (a instanceof Float32Array) a.fill(NaN); }, d: 'overwrites the opts arrays (2^31-1, NaN)' };
    }
    case 0: {
      const i = g.int(16);
      return { v: () => { const a = ctx.args[i]; if (ArrayBuffer.isView(a)) detach(a.buffer); }, d: `detaches argument ${i}` };
    }
    case 1: return { v: () => { for (const a of ctx.args) if (ArrayBuffer.isView(a)) detach(a.buffer); }, d: 'detaches every buffer' };
    case 2: return {
      v: () => {
        for (const a of ctx.args) {
          const b = ArrayBuffer.isView(a) ? (a.buffer as ArrayBuffer & { resizable?: boolean; resize?(n: number): void }) : null;
          if (b?.resizable) b.resize!(0);
        }
      },
      d: 'shrinks resizable buffers to 0',
    };
    case 3: {
      const n = g.pick([1, 2, 3, 8]);
      ctx.state = true;
      return { v: () => binding.setNumThreads(n), d: `calls setNumThreads(${n})` };
    }
    case 4: return { v: () => smallUpdate(binding), d: 'calls attnUpdate re-entrantly' };
    default: return ctx.api.gc ? { v: () => ctx.api.gc!(), d: 'runs gc()' } : undefined;
  }
}

/** A small valid attnUpdate (for re-entrant calls from getters and callbacks). */
function smallUpdate(binding: Record<string, Fn>): void {
  const f = (n: number) => new Float32Array(n);
  binding.attnUpdate({ B: 1, H: 2, Hkv: 1, T: 3, S: 4, sCap: 4, dK: 2, dV: 2 }, { scale: 1, causal: false, qOffset: 0, sOffset: 0, dropoutP: 0, seed: 0 }, f(12), f(8), f(8), f(6), f(6), f(12));
}

const describeArgs = (vs: V[]) => vs.map((x) => x.d).join(', ');

/**
 * Arguments for `slots`: all valid (60%), some slots bad (35%), or a wrong count (5%).
 */
function buildArgs(g: Gen, slots: Slot[], ctx: Ctx): V[] {
  const mode = g.int(20);
  const bad = new Set<number>();
  if (mode >= 8 && mode < 19) for (let n = g.chance(0.7) ? 1 : g.range(2, 3); n > 0; n--) bad.add(g.int(slots.length));
  const vs = slots.map((s, i) => (bad.has(i) ? s.bad(g) : s.ok(g)));
  if (mode === 19) {
    if (g.chance(0.5)) vs.length = g.int(vs.length);
    else for (let n = g.range(1, 3); n > 0; n--) vs.push(g.chance(0.5) ? { v: undefined, d: 'undefined' } : scalar(g));
  }
  ctx.args = vs.map((x) => x.v);
  return vs;
}

// ---- sizes ---------------------------------------------------------------------------------

interface AttnSizes { B: number; H: number; Hkv: number; T: number; S: number; sCap: number; dK: number; dV: number }

const HEAD_DIMS = [1, 2, 3, 4, 5, 7, 8, 16, 24, 64, 80];

function attnSizes(g: Gen, size: 'small' | 'medium' | 'large'): AttnSizes {
  if (size === 'small') {
    const Hkv = g.pick([1, 1, 2, 3]);
    const dK = g.pick(HEAD_DIMS);
    const S = g.chance(0.1) ? 0 : g.range(1, 40);
    return { B: g.range(1, 2), H: Hkv * g.pick([1, 2, 4]), Hkv, T: g.chance(0.8) ? g.range(1, 20) : g.range(17, 40), S, sCap: S + (g.chance(0.2) ? g.range(1, 5) : 0), dK, dV: g.chance(0.7) ? dK : g.pick(HEAD_DIMS) };
  }
  const Hkv = g.pick([1, 2, 4]);
  const S = size === 'medium' ? g.range(256, 2048) : g.pick([100, 300, 700, 1025]);
  const dK = g.pick([64, 80, 128]);
  return { B: 1, H: Hkv * g.pick([1, 2, 4]) , Hkv, T: g.pick([1, 3, 16, 17, 35, 64, 135]), S, sCap: S + g.int(3), dK, dV: g.chance(0.8) ? dK : g.pick([64, 80, 128]) };
}

function optsFields(g: Gen, s: { S: number; T: number; dK: number }, sOffset = true, dtype?: KvDtype): Record<string, Field> {
  const dropoutP = g.chance(0.7) ? 0 : g.pick([0.1, 0.5, 0.9, 0.999]);
  return {
    ...(dtype === undefined || (dtype === 'f32' && g.chance(0.5)) ? {} : { kvDtype: dtype }),
    scale: g.chance(0.8) ? 1 / Math.sqrt(s.dK) : g.pick([0, -1, 100, 1e-30, 3.4e38]),
    causal: g.chance(0.5),
    qOffset: g.chance(0.7) ? s.S - s.T : g.pick([-5, 0, 3, s.S, 2 ** 31 - 1, -(2 ** 31 - 1)]),
    sOffset: sOffset && g.chance(0.3) ? g.pick([1, 7, 1000, 2 ** 31 - 1]) : 0,
    dropoutP,
    seed: g.chance(0.8) ? g.int(1000) : g.pick([0, 2 ** 53 - 1, 2 ** 32]),
  };
}

const I32_MIN = -(2 ** 31), I32_MAX = 2 ** 31 - 1;

/**
 * The score-modifier and ragged-batch options (softcap, alibi [H], window, kvRanges [B,2],
 * qOffsets [B]), each present with some probability, with valid or near-valid contents (extreme
 * but accepted values: qOffsets ±2^31, kvRanges ending beyond S, huge slopes).
 */
function modFields(g: Gen, s: AttnSizes): Record<string, Field> {
  const f: Record<string, Field> = {};
  const some = g.chance(0.5); // half the calls use none, so the plain paths keep their share
  if (!some) return f;
  if (g.chance(0.35)) f.softcap = g.pick([0, 0, 30, 50, 1, 1e-30, 3.4e38, 1e-45]);
  if (g.chance(0.35)) f.window = g.chance(0.8) ? g.range(0, s.S + 2) : g.pick([1, I32_MAX]);
  if (g.chance(0.3)) {
    const a = new Float32Array(s.H);
    const mode = g.int(4);
    for (let h = 0; h < s.H; h++) a[h] = mode === 0 ? 2 ** -(8 * (h + 1) / s.H) : mode === 1 ? 0 : mode === 2 ? g.pick([-1, 1e-45, 3.4e38, -3.4e38]) : 2 ** -(h + 1);
    f.alibi = a;
  }
  if (g.chance(0.35)) {
    const r = new Int32Array(2 * s.B);
    for (let b = 0; b < s.B; b++) {
      const near = g.chance(0.15);
      const lo = near ? g.pick([0, s.S, s.S + 5, I32_MAX]) : g.range(0, s.S);
      r[2 * b] = lo;
      r[2 * b + 1] = near ? g.pick([lo, I32_MAX, lo + s.S + 3]) : g.range(lo, s.S);
    }
    f.kvRanges = r;
  }
  if (g.chance(0.3)) {
    const o = new Int32Array(s.B);
    for (let b = 0; b < s.B; b++) o[b] = g.chance(0.8) ? s.S - s.T + g.range(-3, 3) : g.pick([I32_MIN, I32_MAX, -(2 ** 31 - 1), 0, -1]);
    f.qOffsets = o;
  }
  return f;
}

/** Paged storage for `s`: page size, block table, page count. sCap is rounded up to whole pages. */
interface Paging { pageSize: number; pages: number; table: Int32Array }
function paging(g: Gen, s: AttnSizes): Paging {
  const p = g.pick([1, 2, 3, 4, 8, 16]);
  s.sCap = g.chance(0.03) && s.S === 0 ? 0 : Math.ceil(Math.max(s.sCap, 1) / p) * p;
  const maxBlocks = s.sCap / p, used = Math.ceil(s.S / p);
  const pages = g.range(1, s.B * maxBlocks + 2);
  const table = new Int32Array(s.B * maxBlocks);
  const shared = g.chance(0.3); // every row reads the same pages (a shared prefix)
  for (let b = 0; b < s.B; b++) {
    for (let j = 0; j < maxBlocks; j++) {
      // Entries past the used blocks are never read and may hold anything.
      table[b * maxBlocks + j] = j >= used && g.chance(0.3) ? g.pick([-1, I32_MIN, I32_MAX, pages]) : shared ? (j % pages) : g.int(pages);
    }
  }
  return { pageSize: p, pages, table };
}

/** A wrong value for a paging field: page sizes that don't divide sCap, table entries out of range, ... */
function badPageField(g: Gen, k: string, s: AttnSizes, pg: Paging): V {
  if (k === 'pageSize') {
    return g.chance(0.5) ? g.pick<V>([{ v: pg.pageSize + 1, d: `${pg.pageSize + 1} (does not divide sCap ${s.sCap})` }, { v: s.sCap + 1, d: `sCap+1` }, { v: I32_MAX, d: '2^31-1' }]) : badInt(g, pg.pageSize);
  }
  // blockTable
  if (g.chance(0.5) && pg.table.length) {
    const t = pg.table.slice();
    const used = Math.ceil(s.S / pg.pageSize), maxBlocks = s.sCap / pg.pageSize;
    const b = g.int(s.B), j = used ? g.int(used) : g.int(Math.max(1, maxBlocks));
    const e = g.pick([-1, pg.pages, pg.pages + 1, I32_MIN, I32_MAX, -(2 ** 30)]);
    t[b * maxBlocks + j] = e;
    return { v: t, d: `${viewD(t)} with [${b},${j}]=${e}${j < used ? '' : ' (unused)'}` };
  }
  return g.chance(0.2) ? { v: null, d: 'null (pageSize without a table)' } : badI32(g, pg.table);
}

/** A wrong value for a modifier option. */
function badModField(g: Gen, k: string, s: AttnSizes): V {
  switch (k) {
    case 'softcap': return g.chance(0.4) ? g.pick<V>([{ v: -1, d: '-1' }, { v: -1e-45, d: '-1e-45' }, { v: -0, d: '-0' }]) : badNumber(g);
    case 'window': return badInt(g, 4);
    case 'alibi': {
      if (g.chance(0.5)) {
        const a = new Float32Array(s.H).fill(0.5);
        const x = g.pick([NaN, Infinity, -Infinity]);
        a[g.int(s.H)] = x;
        return { v: a, d: `f32(${s.H}) with a ${x}` };
      }
      return badF32(g, s.H);
    }
    case 'kvRanges': {
      if (g.chance(0.6)) {
        const r = new Int32Array(2 * s.B);
        for (let b = 0; b < s.B; b++) { r[2 * b] = 0; r[2 * b + 1] = s.S; }
        const b = g.int(s.B);
        const [lo, hi] = g.pick<[number, number]>([[s.S, 0], [3, 2], [-1, s.S], [I32_MIN, 0], [I32_MAX, I32_MIN], [0, -1], [I32_MAX, I32_MAX - 1]]);
        r[2 * b] = lo; r[2 * b + 1] = hi;
        return { v: r, d: `${viewD(r)} row ${b} [${lo}, ${hi})` };
      }
      return badI32(g, new Int32Array(2 * s.B));
    }
    case 'qOffsets': return badI32(g, new Int32Array(s.B));
    default: return badInt(g, 1);
  }
}

const badDimField = (g: Gen, _k: string, v: Field) => badInt(g, v as number);

const ATTN_DIM_KEYS = ['B', 'H', 'Hkv', 'T', 'S', 'sCap', 'dK', 'dV'] as const;
const MHA_DIM_KEYS = ['B', 'T', 'S', 'dModel', 'dKvIn', 'dOut', 'H', 'Hkv', 'dK', 'dV'] as const;

/**
 * dims as an object (objSlot) or, half the time, packed: an Int32Array of `keys` in order (the
 * binding's light form); a bad pack has a wrong length, or a value out of range or off by one.
 */
function dimsSlot(g: Gen, fields: Record<string, number>, keys: readonly string[], ctx: Ctx): Slot {
  const obj = objSlot('dims', fields, ctx, badDimField);
  if (g.chance(0.5)) return obj;
  const pack = (a: number[]): V => ({ v: Int32Array.from(a), d: `Int32Array[${a.join(',')}]` });
  const values = keys.map((k) => fields[k]);
  return {
    name: 'dims',
    ok: () => pack(values),
    bad: (g2) => {
      if (g2.chance(0.2)) return g2.chance(0.5) ? pack(values.slice(1)) : pack([...values, 1]);
      if (g2.chance(0.2)) return obj.bad(g2);
      const a = [...values], i = g2.int(a.length);
      a[i] = g2.pick([0, -1, -(2 ** 31), I32_MAX, a[i] + 1, Math.max(0, a[i] - 1), a[i] * 2]);
      return pack(a);
    },
  };
}
const badOptField = (g: Gen, k: string, v: Field): V => {
  if (k === 'kvDtype') return g.chance(0.2) ? badString(g) : g.pick<V>([{ v: 'F16', d: "'F16'" }, { v: 'fp16', d: "'fp16'" }, { v: 'int8', d: "'int8'" }, { v: '', d: "''" }, { v: 'f32', d: "'f32'" }, { v: 'i8', d: "'i8'" }, { v: 'f16', d: "'f16'" }, { v: 'bf16', d: "'bf16'" }, scalar(g)]);
  if (k === 'causal') return g.pick<V>([{ v: 1, d: '1' }, { v: 'true', d: "'true'" }, { v: null, d: 'null' }, { v: undefined, d: 'undefined' }, { v: new Boolean(false), d: 'new Boolean(false)' }, { v: {}, d: '{}' }]);
  return k === 'scale' || k === 'dropoutP' ? badNumber(g) : badInt(g, v as number);
};

const numel = (...d: number[]) => d.reduce((a, b) => a * b, 1);

/** Cache storage k or v of `dtype` (Float32Array, Uint16Array bits, Int8Array). */
function storageSlot(name: string, dtype: KvDtype, n: number): Slot {
  if (dtype === 'f32') return f32Slot(name, n);
  return {
    name,
    ok: (g) => storage(g, dtype, n),
    bad: (g) => g.pick<(g2: Gen) => V>([
      (g2) => storage(g2, dtype === 'i8' ? 'f16' : 'i8', n),
      () => ({ v: new Int16Array(n), d: `i16(${n})` }),
      () => ({ v: new Uint8Array(n), d: `u8(${n})` }),
      (g2) => storage(g2, dtype, n + 1),
      (g2) => (n > 0 ? storage(g2, dtype, n - 1) : storage(g2, dtype, 1)),
      (g2) => badF32(g2, n),
    ])(g),
  };
}

/** Attention slots and the storage's leading rows: B·H_kv·S_cap, or pages·H_kv·pageSize when paged. */
interface AttnArgs { slots: Slot[]; lead: number }

/**
 * dims, opts, q, k (and v, m, l, acc); the scales come from scaleSlots. opts may carry the score
 * modifiers and ragged-batch arrays (modFields) and, with `paged` (attnUpdate), paged storage:
 * pageSize and blockTable, k and v then whole pages. Bad opts fields for those come from
 * badModField / badPageField; getters and Proxies over them from objSlot.
 */
function attnSlots(g: Gen, s: AttnSizes, ctx: Ctx, withV: boolean, paged: boolean): AttnArgs {
  const dtype: KvDtype = g.chance(0.7) ? 'f32' : g.pick(['f16', 'bf16', 'i8'] as const);
  const pg = paged ? paging(g, s) : undefined;
  const dims = dimsSlot(g, { ...s }, ATTN_DIM_KEYS, ctx);
  const fields: Record<string, Field> = { ...optsFields(g, s, true, dtype), ...modFields(g, s) };
  if (pg) Object.assign(fields, { pageSize: pg.pageSize, blockTable: pg.table });
  // A slot offset (a ring buffer's part): valid ones keep sStart + S <= sCap; a few cross it, or come with pages.
  else if (g.chance(0.15)) fields.sStart = g.chance(0.85) ? g.range(0, s.sCap - s.S + 1) : g.pick([s.sCap - s.S + 1, s.sCap, I32_MAX]);
  if (pg && g.chance(0.02)) fields.sStart = 1;
  ctx.optArrays = Object.values(fields).filter((x): x is Int32Array => ArrayBuffer.isView(x));
  const opts = objSlot('opts', fields, ctx, (g2, k, v) =>
    k === 'pageSize' || k === 'blockTable' ? badPageField(g2, k, s, pg!) : k in MOD_KEYS ? badModField(g2, k, s) : badOptField(g2, k, v));
  const lead = pg ? pg.pages * s.Hkv * pg.pageSize : numel(s.B, s.Hkv, s.sCap);
  const slots = [dims, opts, f32Slot('q', numel(s.B, s.H, s.T, s.dK)), storageSlot('k', dtype, lead * s.dK)];
  if (withV) {
    const rows = numel(s.B, s.H, s.T);
    slots.push(storageSlot('v', dtype, lead * s.dV), f32Slot('m', rows), f32Slot('l', rows), f32Slot('acc', rows * s.dV));
  }
  return { slots, lead };
}
const MOD_KEYS = { softcap: 1, alibi: 1, window: 1, kvRanges: 1, qOffsets: 1 };

/** The scale arguments after the arrays (see attnSlots); `attnProbs` takes kScale only. */
function scaleSlots(g: Gen, s: AttnSizes, a: AttnArgs, both: boolean): Slot[] {
  const dtype = (a.slots[1].ok(g).v as { kvDtype?: string }).kvDtype;
  const groups = (d: number) => Math.ceil(d / 32);
  const kS = f32Slot('kScale', a.lead * groups(s.dK)), vS = f32Slot('vScale', a.lead * groups(s.dV));
  if (dtype === 'i8') return g.chance(0.97) ? (both ? [kS, vS] : [kS]) : [];
  if (g.chance(0.85)) return [];
  const nul: Slot = { name: 'null', ok: () => ({ v: null, d: 'null' }), bad: () => ({ v: undefined, d: 'undefined' }) };
  return g.chance(0.6) ? (both ? [nul, nul] : [nul]) : both ? [kS, vS] : [kS];
}

// ---- addon exports ------------------------------------------------------------------------

type Maker = (g: Gen, api: Api) => Call;

function simple(target: string, slots: (g: Gen, ctx: Ctx) => Slot[], after?: (g: Gen, ctx: Ctx) => void): Maker {
  return (g, api) => {
    const ctx: Ctx = { api, args: [], state: false };
    const vs = buildArgs(g, slots(g, ctx), ctx);
    after?.(g, ctx);
    const fn = api.binding[target];
    return { target, d: describeArgs(vs), run: () => fn(...ctx.args), state: ctx.state };
  };
}

const sizeOf = (g: Gen): 'small' | 'large' => (g.chance(0.005) ? 'large' : 'small');

const attnUpdate = simple('attnUpdate', (g, ctx) => {
  const s = attnSizes(g, sizeOf(g));
  const a = attnSlots(g, s, ctx, true, g.chance(0.3));
  return [...a.slots, ...scaleSlots(g, s, a, true)];
});

function attnUpdateAsync(g: Gen, api: Api): Call {
  const ctx: Ctx = { api, args: [], state: false };
  const s = attnSizes(g, g.chance(0.03) ? 'medium' : 'small');
  const a = attnSlots(g, s, ctx, true, g.chance(0.3));
  const slots = [...a.slots, ...scaleSlots(g, s, a, true)];
  slots.push({ name: 'callback', ok: () => ({ v: null, d: 'callback' }), bad: (g2) => scalar(g2) });
  const cbAt = slots.length - 1;
  const vs = buildArgs(g, slots, ctx);
  // The addon calls the last argument when it is a function: that one (or the callback slot's
  // placeholder) is wrapped, so the call knows when the fold is done.
  const last = vs.length - 1;
  const userCallback = last >= 0 && typeof vs[last].v === 'function' ? (vs[last].v as Fn) : undefined;
  const cbIndex = userCallback ? last : vs.length === slots.length && vs[cbAt].d === 'callback' ? cbAt : -1;
  // What the caller does while the fold runs on the worker thread.
  const action = g.int(ctx.optArrays?.length ? 16 : 14);
  const optArrays = ctx.optArrays ?? [];
  const fillInt = g.chance(0.5) ? -(2 ** 31) : 2 ** 31 - 1;
  const target = g.int(6) + 2;
  const whileRunning = [
    '', '', '', '', '',
    `detaches argument ${target}`, 'detaches every buffer', 'shrinks resizable buffers', 'runs attnUpdate on the same arrays',
    'sets threads', 'starts a second attnUpdateAsync on the same arrays', 'fills the arrays with NaN',
    'the callback runs attnUpdate', 'the callback sets threads',
    'overwrites the opts arrays (blockTable, kvRanges, qOffsets with -2^31 / 2^31-1, alibi with NaN)', 'detaches the opts arrays',
  ][action];
  const threads = g.pick([1, 2, 3]);
  // Only buffers of 64 KiB and more are unmapped when freed (MALLOC_MMAP_THRESHOLD_); gc only then.
  const gc = ctx.args.slice(2, cbAt).some((a) => ArrayBuffer.isView(a) && a.byteLength >= 65536) ? api.gc : undefined;
  if (action === 9 || action === 13) ctx.state = true;
  const fn = api.binding.attnUpdateAsync;
  return {
    target: 'attnUpdateAsync',
    d: describeArgs(vs) + (whileRunning ? `; meanwhile ${whileRunning}` : ''),
    state: ctx.state,
    run: async () => {
      const args = ctx.args;
      const views = args.slice(2, cbAt).filter((a): a is Float32Array => ArrayBuffer.isView(a));
      let pending = 0;
      let resolveAll!: () => void;
      const done = new Promise<void>((r) => (resolveAll = r));
      const cb = (err?: unknown) => {
        if (err !== undefined && err !== null && !(err instanceof Error)) throw new TypeError(`attnUpdateAsync callback got a non-Error ${String(err)}`);
        userCallback?.(err);
        // Re-entering the addon from the completion callback.
        if (action === 12) try { smallUpdate(api.binding); } catch { /* counted by its own checks elsewhere */ }
        if (action === 13) api.binding.setNumThreads(threads);
        if (--pending === 0) resolveAll();
      };
      const start = () => {
        const a = [...args];
        if (cbIndex >= 0) a[cbIndex] = cb;
        if (typeof a[a.length - 1] === 'function') pending++; // else the addon must throw
        try {
          fn(...a);
        } catch (e) {
          if (typeof a[a.length - 1] === 'function') pending--;
          throw e;
        }
        if (pending === 0) resolveAll();
      };
      start(); // a synchronous throw (bad arguments) ends the call here
      try {
        switch (action) {
          case 5: { const a = args[target]; if (ArrayBuffer.isView(a)) detach(a.buffer); gc?.(); break; }
          case 6: for (const a of views) detach(a.buffer); gc?.(); break;
          case 7: for (const a of views) { const b = a.buffer as ArrayBuffer & { resizable?: boolean; resize?(n: number): void }; if (b.resizable) b.resize!(0); } gc?.(); break;
          case 8: try { api.binding.attnUpdate(...args.slice(0, cbAt)); } catch { /* same checks as the async call */ } break;
          case 9: api.binding.setNumThreads(threads); break;
          case 10: start(); break;
          case 11: for (const a of views) if (a.length) a.fill(NaN); break;
          // The fold must use the binding's copies of the option arrays.
          case 14: for (const a of optArrays) { if (a instanceof Int32Array) a.fill(fillInt); else if (a instanceof Float32Array) a.fill(NaN); } break;
          case 15: for (const a of optArrays) detach(a.buffer); gc?.(); break;
        }
      } finally {
        await done;
      }
    },
  };
}

const attnMerge = simple('attnMerge', (g) => {
  const rows = g.chance(0.95) ? g.range(1, 40) : g.range(1000, 5000), dV = g.pick(HEAD_DIMS);
  return [intSlot('rows', rows), intSlot('dV', dV), f32Slot('m1', rows), f32Slot('l1', rows), f32Slot('acc1', rows * dV), f32Slot('m2', rows), f32Slot('l2', rows), f32Slot('acc2', rows * dV)];
});
/**
 * attnFinalize(rows, dV, m, l, acc, out, lse[, sinks [H], T]) with rows = B·H·T: half the calls
 * without sinks, some with null sinks, the rest with sink logits (finite, NaN/Inf, huge).
 */
const attnFinalize = simple('attnFinalize', (g) => {
  const B = g.range(1, 3), H = g.pick([1, 2, 3, 4, 8]), T = g.range(1, 6);
  const rows = g.chance(0.95) ? B * H * T : B * H * g.range(200, 600), dV = g.pick(HEAD_DIMS);
  const base = [intSlot('rows', rows), intSlot('dV', dV), f32Slot('m', rows), f32Slot('l', rows), f32Slot('acc', rows * dV), f32Slot('out', rows * dV), f32Slot('lse', rows)];
  if (g.chance(0.5)) return base;
  const sinks: Slot = {
    name: 'sinks',
    ok: (g2) => (g2.chance(0.15) ? { v: null, d: 'null' } : f32(g2, H)),
    bad: (g2) => g2.pick<(g3: Gen) => V>([
      (g3) => badF32(g3, H),
      () => ({ v: new Float32Array(H + 1), d: `f32(${H + 1}) (rows not divisible by H·T)` }),
      () => ({ v: new Float32Array(0), d: 'f32(0)' }),
      () => ({ v: new Float32Array(rows + 1), d: `f32(rows+1=${rows + 1})` }),
      () => ({ v: new Float32Array(2 ** 20), d: 'f32(2^20)' }),
    ])(g2),
  };
  const t: Slot = { name: 'T', ok: () => ({ v: rows / (B * H), d: String(rows / (B * H)) }), bad: (g2) => (g2.chance(0.3) ? { v: rows + 1, d: 'rows+1' } : badInt(g2, T)) };
  return [...base, sinks, t];
});
const attnProbs = simple('attnProbs', (g, ctx) => {
  const s = attnSizes(g, sizeOf(g));
  // Paging is refused here (attnUpdate only): a few calls check that.
  const slots = attnSlots(g, s, ctx, false, g.chance(0.03));
  const np = numel(s.B, s.H, s.T, s.S);
  return [...slots.slots, f32Slot('lse', numel(s.B, s.H, s.T)), f32Slot('probs', np, true), u8Slot('keep', np), ...scaleSlots(g, s, slots, false)];
});

function gemmSizes(g: Gen): [number, number, number] {
  if (g.chance(0.97)) return [g.range(1, 20), g.range(1, 40), g.range(1, 40)];
  // Valid but larger: N >= 1024 at 2 threads took a wrong packing buffer on AVX-512.
  return [g.pick([1, 3, 16, 17, 64, 100]), g.pick([16, 64, 100]), g.pick([256, 513, 1024, 1100])];
}
const linear = simple('linear', (g) => {
  const [M, K, N] = gemmSizes(g);
  return [f32Slot('x', M * K), f32Slot('w', K * N), f32Slot('b', N, true), f32Slot('y', M * N), intSlot('M', M), intSlot('K', K), intSlot('N', N)];
});
const projectHeads = simple('projectHeads', (g) => {
  const B = g.range(1, 2), T = g.range(1, 20), K = g.range(1, 40), heads = g.range(1, 4), d = g.pick(HEAD_DIMS);
  return [f32Slot('x', B * T * K), f32Slot('w', K * heads * d), f32Slot('b', heads * d, true), f32Slot('out', B * heads * T * d), intSlot('B', B), intSlot('T', T), intSlot('K', K), intSlot('heads', heads), intSlot('d', d)];
});
const mergeProject = simple('mergeProject', (g) => {
  const B = g.range(1, 2), heads = g.range(1, 4), T = g.range(1, 20), d = g.pick(HEAD_DIMS), N = g.chance(0.99) ? g.range(1, 40) : 1024;
  return [f32Slot('o', B * heads * T * d), f32Slot('w', heads * d * N), f32Slot('b', N, true), f32Slot('y', B * T * N), intSlot('B', B), intSlot('heads', heads), intSlot('T', T), intSlot('d', d), intSlot('N', N)];
});
const mhaForward = simple('mhaForward', (g, ctx) => {
  const large = g.chance(0.002);
  const Hkv = g.pick([1, 2]), H = large ? 8 : Hkv * g.pick([1, 2, 4]);
  const dK = large ? 128 : g.pick(HEAD_DIMS), dV = g.chance(0.7) ? dK : g.pick(HEAD_DIMS);
  const dModel = large ? 1024 : g.range(1, 32);
  const d = { B: g.range(1, 2), T: large ? g.pick([1, 17]) : g.range(1, 12), S: large ? 64 : g.range(1, 24), dModel, dKvIn: g.chance(0.8) ? dModel : g.range(1, 32), dOut: g.chance(0.8) ? dModel : g.range(1, 32), H, Hkv, dK, dV };
  return [
    dimsSlot(g, d, MHA_DIM_KEYS, ctx), objSlot('opts', optsFields(g, d, false), ctx, badOptField),
    f32Slot('xQ', d.B * d.T * d.dModel), f32Slot('xKv', d.B * d.S * d.dKvIn),
    f32Slot('wQ', d.dModel * H * dK), f32Slot('bQ', H * dK, true), f32Slot('wK', d.dKvIn * Hkv * dK), f32Slot('bK', Hkv * dK, true),
    f32Slot('wV', d.dKvIn * Hkv * dV), f32Slot('bV', Hkv * dV, true), f32Slot('wO', H * dV * d.dOut), f32Slot('bO', d.dOut, true),
    f32Slot('y', d.B * d.T * d.dOut), f32Slot('lse', d.B * H * d.T),
  ];
});
const setNumThreads = simple('setNumThreads', () => [intSlot('n', 1)], (g, ctx) => {
  ctx.state = true;
  // Mostly valid counts (1..256, some large); bad ones come from buildArgs.
  if (ctx.args.length === 1 && ctx.args[0] === 1) ctx.args[0] = g.chance(0.9) ? g.pick([1, 2, 3, 4]) : g.pick([16, 64, 256, 257, 1e8, 2 ** 31 - 1]);
});

const info = simple('info', (g) => (g.chance(0.8) ? [] : [{ name: 'extra', ok: (g2: Gen) => scalar(g2), bad: (g2: Gen) => scalar(g2) }]));

function kernelPathSlot(api: Api): Slot {
  const names = [...api.paths, 'auto', 'tile', 'blas', 'rows', 'deterministic'];
  return {
    name: 'path',
    ok: (g) => { const p = g.pick(names); return { v: p, d: `'${p}'` }; },
    bad: (g) => g.pick<V>([{ v: 'TILE', d: "'TILE'" }, { v: '', d: "''" }, { v: 'auto\0', d: "'auto\\0'" }, { v: 'x'.repeat(10000), d: "'x'*10000" }, scalar(g), { v: new String('auto'), d: "new String('auto')" }, badString(g)]),
  };
}
const setKernelPath = simple('setKernelPath', (_g, ctx) => [kernelPathSlot(ctx.api)], (_g, ctx) => (ctx.state = true));

/** A result that contradicts the export's contract (counted as an unclear error). */
class FuzzCheck extends Error {
  constructor(what: string) {
    super(`fuzz check failed: ${what}`);
    this.name = 'FuzzCheck';
  }
}

// poolCheck(tasks, throwAt): returns 8·tasks steps unless task throwAt < tasks throws (an
// expected Error "internal error: task N failed"; fuzz/worker.ts tallies it as expected).
function poolCheck(g: Gen, api: Api): Call {
  const tasks = g.chance(0.995) ? g.range(0, 64) : g.pick([1000, 65536]);
  const inner = simple('poolCheck', () => [intSlot('tasks', tasks), intSlot('throwAt', g.chance(0.5) ? -1 : g.range(0, tasks + 1))])(g, api);
  return {
    ...inner,
    run: () => {
      const r = inner.run();
      if (typeof r !== 'number' || r % 8 !== 0 || r > 8 * (1 << 20)) throw new FuzzCheck(`poolCheck returned ${String(r)}`);
      return r;
    },
  };
}

// Getters: no arguments (sometimes extra ones, which they ignore); the results must keep their contract.
const getter = (target: string, check: (r: unknown, api: Api) => string | undefined): Maker => (g, api) => {
  const extra: V[] = g.chance(0.8) ? [] : [scalar(g), ...(g.chance(0.5) ? [badString(g)] : [])];
  const fn = api.binding[target];
  return {
    target,
    d: describeArgs(extra),
    state: target === 'resetKernelCounts',
    run: () => {
      const r = fn(...extra.map((x) => x.v));
      const bad = check(r, api);
      if (bad) throw new FuzzCheck(`${target}() returned ${bad}`);
      return r;
    },
  };
};
const getKernelPath = getter('getKernelPath', (r, api) => (typeof r === 'string' && api.paths.includes(r) ? undefined : String(r)));
const kernelCounts = getter('kernelCounts', (r) => {
  if (r === null || typeof r !== 'object') return String(r);
  const badEntry = Object.entries(r).find(([, n]) => !Number.isSafeInteger(n) || (n as number) < 0);
  return badEntry ? `${badEntry[0]}: ${String(badEntry[1])}` : Object.keys(r).length ? undefined : 'no counters';
});
const resetKernelCounts = getter('resetKernelCounts', (r) => (r === undefined ? undefined : String(r)));

/** Any export this file has no signature for: 0-4 arguments from every pool. */
function generic(target: string): Maker {
  return (g, api) => {
    const vs: V[] = [];
    for (let n = g.chance(0.5) ? 0 : g.range(1, 4); n > 0; n--) vs.push(g.pick([scalar, (g2: Gen) => f32(g2, g2.range(0, 8)), (g2: Gen) => badInt(g2, 1)])(g));
    const fn = api.binding[target];
    return { target, d: describeArgs(vs), run: () => fn(...vs.map((x) => x.v)), state: true };
  };
}

/** rope(x, out, dims {B,H,T,d}, opts {rotaryDim, theta, interleaved}, positions [B,T]); out is x itself a third of the time. */
function rope(g: Gen, api: Api): Call {
  const d = { B: g.range(1, 3), H: g.range(1, 4), T: g.chance(0.98) ? g.range(1, 12) : 300, d: g.pick(HEAD_DIMS) };
  const n = numel(d.B, d.H, d.T, d.d);
  const rot = g.chance(0.8) ? 2 * g.range(1, Math.floor(d.d / 2) + 1) : g.pick([0, 1, 3, d.d + 1, d.d + 2]);
  const opts = { rotaryDim: rot, theta: g.chance(0.8) ? g.pick([10000, 500000, 1e6]) : g.pick([1e-30, 1, 1e300]), interleaved: g.chance(0.5) };
  const pos = (g2: Gen): V => {
    const p = new Int32Array(d.B * d.T);
    for (let i = 0; i < p.length; i++) p[i] = g2.chance(0.9) ? g2.range(0, 40000) : g2.pick([I32_MIN, I32_MAX, -1]);
    return { v: p, d: viewD(p) };
  };
  const inPlace = g.chance(0.33);
  const ctx: Ctx = { api, args: [], state: false };
  const slots: Slot[] = [
    f32Slot('x', n), f32Slot('out', n), objSlot('dims', d, ctx, badDimField),
    objSlot('opts', opts, ctx, (g2, k) => (k === 'interleaved' ? g2.pick<V>([{ v: 1, d: '1' }, { v: null, d: 'null' }, scalar(g2)]) : k === 'theta' ? g2.pick<V>([{ v: 0, d: '0' }, { v: -1, d: '-1' }, badNumber(g2)]) : badInt(g2, 2))),
    { name: 'positions', ok: pos, bad: (g2) => badI32(g2, new Int32Array(d.B * d.T)) },
  ];
  const vs = buildArgs(g, slots, ctx);
  // ArrayBuffer.isView, not instanceof: a revoked Proxy throws on getPrototypeOf.
  const x0 = ctx.args[0], xIsArray = ArrayBuffer.isView(x0) && x0.constructor === Float32Array;
  if (inPlace && ctx.args.length >= 2 && xIsArray) ctx.args[1] = x0;
  else if (g.chance(0.03) && ctx.args.length >= 2) {
    // out overlapping x by all but one float: refused.
    const buf = new ArrayBuffer(4 * (n + 1));
    [ctx.args[0], ctx.args[1]] = [new Float32Array(buf, 0, n), new Float32Array(buf, 4, n)];
  }
  const fn = api.binding.rope;
  return { target: 'rope', d: describeArgs(vs) + (inPlace ? ' (in place)' : ''), run: () => fn(...ctx.args), state: false };
}

/** kvEncode(dtype, src [rows,d], dst [rows,d], scale [rows,ceil(d/32)] | null, rows, d). */
const kvEncode = simple('kvEncode', (g) => {
  const dtype = g.pick(['f16', 'bf16', 'i8'] as const), rows = g.chance(0.97) ? g.range(0, 20) : 5000, d = g.pick(HEAD_DIMS);
  const scale = dtype === 'i8' ? f32Slot('scale', rows * Math.ceil(d / 32)) : { name: 'scale', ok: () => ({ v: null, d: 'null' }), bad: (g2: Gen) => f32(g2, rows) };
  const dt: Slot = { name: 'dtype', ok: () => ({ v: dtype, d: `'${dtype}'` }), bad: (g2) => g2.pick<V>([{ v: 'f32', d: "'f32'" }, { v: 'int8', d: "'int8'" }, badString(g2), scalar(g2)]) };
  return [dt, f32Slot('src', rows * d), storageSlot('dst', dtype, rows * d), scale, intSlot('rows', rows), intSlot('d', d)];
});

const EXPORTS: Record<string, Maker> = {
  attnUpdate, attnUpdateAsync, attnMerge, attnFinalize, attnProbs, linear, mhaForward, projectHeads, mergeProject, setNumThreads, info, setKernelPath, poolCheck, rope, kvEncode,
  getKernelPath, kernelCounts, resetKernelCounts,
};

// ---- public API ---------------------------------------------------------------------------

/** A tensor {data, shape}: valid, or with a bad shape, data, or form. */
function tensorV(g: Gen, shape: number[], badP = 0.15, capacity?: number): V {
  const n = numel(...(capacity === undefined ? shape : [shape[0], shape[1], capacity, ...shape.slice(3)]));
  if (!g.chance(badP)) {
    const data = f32(g, n);
    const t: Record<string, unknown> = { data: data.v, shape };
    if (capacity !== undefined) t.capacity = capacity;
    return { v: t, d: `T[${shape}]${capacity !== undefined ? `cap${capacity}` : ''}:${data.d}` };
  }
  switch (g.int(6)) {
    case 0: return { v: { data: badF32(g, n).v, shape }, d: `T[${shape}] bad data` };
    case 1: {
      const s: unknown[] = [...shape], ds = shape.map(String);
      const i = g.int(s.length + 1);
      if (i === s.length) {
        s.pop();
        ds.pop();
      } else {
        const x = badInt(g, shape[i], true);
        s[i] = x.v;
        ds[i] = x.d;
      }
      return { v: { data: new Float32Array(n), shape: s }, d: `T shape [${ds}]` };
    }
    case 2: return object(g, { data: { v: new Float32Array(n), d: `f32(${n})` }, shape: { v: shape, d: `[${shape}]` } });
    case 3: return { v: { data: new Float32Array(n), shape: new Proxy(shape, { get: (t, k) => { if (k === '1') throw new FuzzTrap('shape[1]'); return Reflect.get(t, k); } }) }, d: `T shape Proxy(throws at [1])` };
    case 4: return { v: { data: new Float32Array(n), shape, capacity: badInt(g, capacity ?? shape[2] ?? 1, true).v }, d: `T[${shape}] bad capacity` };
    default: return scalar(g);
  }
}

function dropoutV(g: Gen): V {
  if (g.chance(0.6)) return { v: undefined, d: 'no dropout' };
  if (g.chance(0.8)) { const p = g.pick([0.1, 0.5, 0]); const seed = g.int(100); return { v: { p, seed }, d: `dropout{p:${p},seed:${seed}}` }; }
  return object(g, { p: badNumber(g), seed: badInt(g, 1, true) });
}

/** obj[key] = value when obj is a plain extensible object (not a Proxy that throws, a primitive, ...). */
function setField(obj: unknown, key: string, value: unknown): void {
  if (obj === null || typeof obj !== 'object' || types.isProxy(obj) || Object.getPrototypeOf(obj) !== Object.prototype || !Object.isExtensible(obj)) return;
  const d = Object.getOwnPropertyDescriptor(obj, key);
  if (!d || (d.writable && d.configurable)) (obj as Record<string, unknown>)[key] = value;
}

/** An options object with fields chosen among valid and bad values. */
function optionsV(g: Gen, fields: Record<string, () => V>): V {
  const f: Record<string, V> = {};
  for (const [k, make] of Object.entries(fields)) if (g.chance(0.5)) f[k] = make();
  return object(g, f);
}

const smallSizes = (g: Gen) => attnSizes(g, 'small');

/** The public score options (ScoreOptions): valid, extreme or wrong, each present half the time via optionsV. */
function scoreFields(g: Gen, s: AttnSizes): Record<string, () => V> {
  const arr = (n: number, make: () => number, typed: boolean): V => {
    const a = Array.from({ length: n }, make);
    return typed ? { v: Float32Array.from(a), d: `f32(${n})` } : { v: a, d: `[${n} numbers]` };
  };
  const rope = (): V => {
    const r: Record<string, unknown> = {};
    if (g.chance(0.5)) r.dim = g.chance(0.8) ? 2 * g.range(1, Math.max(1, Math.floor(s.dK / 2)) + 1) : g.pick([1, 0, s.dK + 2, 2.5, -2]);
    if (g.chance(0.4)) r.theta = g.chance(0.8) ? g.pick([10000, 1e6]) : g.pick([0, -1, NaN, Infinity]);
    if (g.chance(0.4)) r.style = g.chance(0.8) ? g.pick(['half', 'interleaved']) : g.pick(['neox', '', 3]);
    return g.chance(0.9) ? { v: r, d: `rope${JSON.stringify(r)}` } : scalar(g);
  };
  return {
    softcap: () => (g.chance(0.8) ? { v: g.pick([0, 1, 30, 1e-30]), d: 'softcap' } : badNumber(g)),
    alibi: () => (g.chance(0.4) ? boolV(g) : g.chance(0.8) ? arr(s.H, () => g.pick([0.5, 0.0625, 0]), g.chance(0.5)) : g.pick([arr(s.H + 1, () => 1, true), arr(s.H, () => NaN, false), scalar(g)])),
    window: () => (g.chance(0.8) ? { v: g.range(0, s.S + 3), d: 'window' } : badInt(g, 2, true)),
    kvRanges: () => (g.chance(0.8) ? { v: Int32Array.from({ length: 2 * s.B }, (_, i) => (i % 2 ? s.S : g.range(0, s.S + 1))), d: 'kvRanges' } : g.pick([{ v: [5, 1], d: '[5,1]' }, { v: new Int32Array(2 * s.B + 1), d: 'i32(2B+1)' }, { v: [0.5, 2], d: '[0.5,2]' }, scalar(g)])),
    qOffsets: () => (g.chance(0.8) ? { v: Array.from({ length: s.B }, () => g.range(-2, s.S + 2)), d: 'qOffsets' } : g.pick([{ v: [2 ** 40], d: '[2^40]' }, { v: new Int32Array(s.B + 1), d: 'i32(B+1)' }, scalar(g)])),
    sinks: () => (g.chance(0.8) ? arr(s.H, () => g.pick([0, -5, 3]), g.chance(0.5)) : g.pick([arr(s.H, () => Infinity, true), arr(1 + s.H, () => 0, false), scalar(g)])),
    rope,
    ropePositions: () => (g.chance(0.8) ? { v: Int32Array.from({ length: s.B * s.T }, () => g.range(0, 50)), d: 'ropePositions' } : g.pick([{ v: new Int32Array(1 + s.B * s.T), d: 'i32(BT+1)' }, { v: [1, 2], d: '[1,2]' }, scalar(g)])),
  };
}
const qOffsetV = (g: Gen, s: AttnSizes): V => (g.chance(0.8) ? { v: g.range(-3, s.S + 3), d: 'qOffset' } : badInt(g, 0, true));
const boolV = (g: Gen): V => (g.chance(0.9) ? { v: g.chance(0.5), d: 'bool' } : scalar(g));

/**
 * An `out` tensor for a result of `shape`: fresh and right, overlapping an input (`alias`: its
 * data, the same buffer at another offset, or the whole input), or bad (tensorV's forms).
 */
function outV(g: Gen, shape: number[], alias: () => unknown): V {
  switch (g.int(6)) {
    case 0: case 1: return tensorV(g, shape, 0);
    case 2: return { v: { get data() { return (alias() as { data?: unknown } | null)?.data; }, shape }, d: `out aliasing an input [${shape}]` };
    case 3: {
      // A view into the same buffer as an input, starting one element in (partial overlap).
      const n = numel(...shape);
      return { v: { get data() { const d = (alias() as { data?: unknown } | null)?.data; return ArrayBuffer.isView(d) && d.buffer.byteLength >= 4 * (n + 1) ? new Float32Array(d.buffer as ArrayBuffer, 4, n) : new Float32Array(n); }, shape }, d: `out overlapping an input at +1 [${shape}]` };
    }
    case 4: return tensorV(g, shape, 1);
    default: return { v: undefined, d: 'no out' };
  }
}

function apiAttention(g: Gen, api: Api): Call {
  const s = smallSizes(g);
  const q = tensorV(g, [s.B, s.H, s.T, s.dK]), k = tensorV(g, [s.B, s.Hkv, s.S || 1, s.dK]), v = tensorV(g, [s.B, s.Hkv, s.S || 1, s.dV]);
  const o = optionsV(g, {
    ...(g.chance(0.4) ? scoreFields(g, s) : {}),
    scale: () => (g.chance(0.7) ? { v: 0.5, d: '0.5' } : badNumber(g)), causal: () => boolV(g), qOffset: () => qOffsetV(g, s), dropout: () => dropoutV(g), returnWeights: () => boolV(g),
    out: () => {
      const inputs = [q, k, v];
      const output = outV(g, [s.B, s.H, s.T, s.dV], () => g.pick(inputs).v), lse = outV(g, [s.B, s.H, s.T], () => (g.chance(0.5) ? output.v : q.v));
      return g.chance(0.9) ? { v: { output: output.v, lse: lse.v }, d: `out{output:${output.d},lse:${lse.d}}` } : scalar(g);
    },
  });
  return { target: 'api.attention', d: [q, k, v, o].map((x) => x.d).join(', '), run: () => api.kv.attention(q.v as Kv.Tensor, k.v as Kv.KvView, v.v as Kv.KvView, o.v as Kv.AttentionOptions) };
}

function apiState(g: Gen, api: Api): Call {
  const s = smallSizes(g);
  const q = tensorV(g, [s.B, s.H, s.T, s.dK], 0.1);
  const o = optionsV(g, { ...(g.chance(0.4) ? scoreFields(g, s) : {}), dV: () => (g.chance(0.9) ? { v: s.dV, d: String(s.dV) } : badInt(g, s.dV, true)), scale: () => badNumber(g), causal: () => boolV(g), qOffset: () => qOffsetV(g, s), dropout: () => dropoutV(g) });
  if (!g.chance(0.1)) setField(o.v, 'dV', s.dV);
  const ops: { d: string; run: (st: Kv.OnlineSoftmaxState) => unknown }[] = [];
  for (let n = g.range(1, 5); n > 0; n--) {
    const S = g.range(0, 12);
    const cap = g.chance(0.7) ? undefined : S + g.range(0, 3);
    const k = tensorV(g, [s.B, s.Hkv, S, s.dK], 0.1, cap), v = tensorV(g, [s.B, s.Hkv, S, s.dV], 0.1, cap);
    const off = g.chance(0.8) ? { v: undefined, d: '' } : badInt(g, 3, true);
    const sOff = off.v as number;
    switch (g.int(7)) {
      case 0: case 1: ops.push({ d: `update(${k.d}, ${v.d}, ${off.d})`, run: (st) => st.update(k.v as Kv.KvView, v.v as Kv.KvView, sOff) }); break;
      case 2: {
        const detachIt = g.chance(0.5);
        ops.push({
          d: `updateAsync(${k.d}, ${v.d}, ${off.d})${detachIt ? ' then detach k, v' : ''}`,
          run: async (st) => {
            const p = st.updateAsync(k.v as Kv.KvView, v.v as Kv.KvView, sOff);
            try {
              // Reading .data may hit one of our throwing Proxies: p is awaited all the same.
              if (detachIt) for (const t of [k.v, v.v]) { const data = (t as { data?: unknown } | null)?.data; if (ArrayBuffer.isView(data)) detach(data.buffer); }
            } finally {
              await p;
            }
          },
        });
        break;
      }
      case 3: ops.push({ d: 'merge(clone)', run: (st) => st.merge(st.clone()) }); break;
      case 4: ops.push({ d: 'merge(bad)', run: (st) => st.merge(scalar(g).v as Kv.OnlineSoftmaxState) }); break;
      case 5: {
        const q2 = g.chance(0.5) ? { v: undefined, d: '' } : tensorV(g, [s.B, s.H, s.T, s.dK], 0.3);
        const ro = g.chance(0.5) ? { v: undefined, d: '' } : optionsV(g, { qOffset: () => qOffsetV(g, s) });
        ops.push({ d: `reset(${q2.d}, ${ro.d})`, run: (st) => st.reset(q2.v as Kv.Tensor, ro.v as { qOffset?: number }) });
        break;
      }
      default: {
        let fo: V;
        if (g.chance(0.4)) { const c = g.chance(0.5); fo = { v: c, d: String(c) }; }
        else {
          const output = outV(g, [s.B, s.H, s.T, s.dV], () => q.v), lse = outV(g, [s.B, s.H, s.T], () => output.v);
          fo = optionsV(g, { consume: () => boolV(g), out: () => ({ v: { output: output.v, lse: lse.v }, d: `{output:${output.d},lse:${lse.d}}` }) });
        }
        ops.push({ d: `finalize(${fo.d})`, run: (st) => st.finalize(fo.v as boolean) });
      }
    }
  }
  return {
    target: 'api.OnlineSoftmaxState',
    d: `new(${q.d}, ${o.d}).${ops.map((x) => x.d).join('.')}`,
    run: async () => {
      const st = new api.kv.OnlineSoftmaxState(q.v as Kv.Tensor, o.v as Kv.StateOptions);
      for (const op of ops) await op.run(st);
    },
  };
}

function apiKvCache(g: Gen, api: Api): Call {
  const s = smallSizes(g);
  const cfg = optionsV(g, {
    capacity: () => (g.chance(0.7) ? { v: g.range(1, 8), d: 'cap' } : badInt(g, 4, true)),
    dtype: () => (g.chance(0.85) ? { v: g.pick(['fp32', 'fp16', 'bf16', 'int8']), d: 'dtype' } : g.pick<V>([{ v: 'f16', d: "'f16'" }, scalar(g)])),
    window: () => (g.chance(0.8) ? { v: g.range(1, 6), d: 'window' } : badInt(g, 2, true)),
    sinkTokens: () => (g.chance(0.8) ? { v: g.range(0, 3), d: 'sinks' } : badInt(g, 1, true)),
    pageSize: () => (g.chance(0.8) ? { v: g.pick([1, 2, 4, 16]), d: 'page' } : badInt(g, 4, true)),
    rope: () => (g.chance(0.8) ? { v: g.chance(0.5) ? {} : { dim: 2, style: 'interleaved' }, d: 'rope' } : g.pick<V>([{ v: { dim: 3 }, d: 'rope{dim:3}' }, scalar(g)])),
  });
  const c = cfg.v as Record<string, unknown> | null;
  if (g.chance(0.9)) {
    for (const [k, x] of Object.entries({ batch: s.B, numKvHeads: s.Hkv, dK: s.dK, dV: s.dV })) setField(c, k, x);
    if (g.chance(0.2)) setField(c, g.pick(['batch', 'numKvHeads', 'dK', 'dV']), badInt(g, 2, true).v);
  }
  const ops: { d: string; run: (kc: Kv.KvCache) => unknown }[] = [];
  for (let n = g.range(1, 5); n > 0; n--) {
    const S = g.range(0, 10);
    const rows = (n: number): V => (g.chance(0.8) ? { v: Array.from({ length: n }, () => g.int(s.B)), d: `rows(${n})` } : g.pick<V>([{ v: [s.B], d: '[B]' }, { v: [-1], d: '[-1]' }, { v: [], d: '[]' }, { v: [0.5], d: '[0.5]' }, scalar(g)]));
    switch (g.int(10)) {
      case 0: case 1: { const k = tensorV(g, [s.B, s.Hkv, S, s.dK], 0.1), v = tensorV(g, [s.B, s.Hkv, S, s.dV], 0.1); ops.push({ d: `append(${k.d}, ${v.d})`, run: (kc) => kc.append(k.v as Kv.Tensor, v.v as Kv.Tensor) }); break; }
      case 6: { const r = rows(s.B); ops.push({ d: `reorder(${r.d})`, run: (kc) => kc.reorder(r.v as number[]) }); break; }
      case 7: { const r = rows(g.range(1, 4)); ops.push({ d: `select(${r.d}).append`, run: (kc) => { const c2 = kc.select(r.v as number[]); c2.append(api.kv.zeros([c2.batch, s.Hkv, 1, s.dK]), api.kv.zeros([c2.batch, s.Hkv, 1, s.dV])); } }); break; }
      case 8: ops.push({ d: 'fork().append', run: (kc) => { const c2 = kc.fork(); c2.append(api.kv.zeros([s.B, s.Hkv, 1, s.dK]), api.kv.zeros([s.B, s.Hkv, 1, s.dV])); } }); break;
      case 9: {
        const q = tensorV(g, [s.B, s.H, s.T, s.dK], 0.05);
        ops.push({ d: `updateCache(${q.d})`, run: (kc) => new api.kv.OnlineSoftmaxState(q.v as Kv.Tensor, { dV: s.dV, causal: true, qOffset: kc.length - s.T }).updateCache(kc).finalize() });
        break;
      }
      case 2: { const x = g.chance(0.7) ? { v: g.range(0, 12), d: 'n' } : badInt(g, 1, true); ops.push({ d: `crop(${x.d})`, run: (kc) => kc.crop(x.v as number) }); break; }
      case 3: { const x = g.chance(0.5) ? { v: undefined, d: '' } : g.chance(0.7) ? { v: g.range(0, 12), d: 'S' } : badInt(g, 1, true); ops.push({ d: `snapshot(${x.d})`, run: (kc) => kc.snapshot(x.v as number) }); break; }
      case 4: ops.push({ d: 'reset()', run: (kc) => kc.reset() }); break;
      default: {
        const q = tensorV(g, [s.B, s.H, s.T, s.dK], 0.05);
        ops.push({ d: `attention(${q.d}, keys(), values())`, run: (kc) => kc.length > 0 && kc.window === 0 && kc.pageSize === 0 && api.kv.attention(q.v as Kv.Tensor, kc.keys(), kc.values(), { causal: true, qOffset: kc.length - s.T }) });
      }
    }
  }
  return { target: 'api.KvCache', d: `new(${cfg.d}).${ops.map((x) => x.d).join('.')}`, run: () => { const kc = new api.kv.KvCache(c as unknown as Kv.KvCacheConfig); for (const op of ops) op.run(kc); } };
}

function mhaConfigV(g: Gen): { v: Kv.MhaConfig; d: string; dims: { dModel: number; dKvIn: number; H: number; Hkv: number; dK: number; dV: number } } {
  const Hkv = g.pick([1, 2]), H = Hkv * g.pick([1, 2]), dK = g.pick([2, 4, 8]), dModel = H * dK;
  const dims = { dModel, dKvIn: g.chance(0.8) ? dModel : g.range(1, 16), H, Hkv, dK, dV: g.chance(0.8) ? dK : g.pick([2, 3, 8]) };
  const cfg: Record<string, unknown> = { dModel, numHeads: H, numKvHeads: Hkv, dKvIn: dims.dKvIn, dV: dims.dV, bias: g.chance(0.7) };
  let d = JSON.stringify(cfg);
  if (g.chance(0.15)) {
    const key = g.pick(['dModel', 'numHeads', 'numKvHeads', 'dKvIn', 'dOut', 'dK', 'dV', 'scale']);
    const x = key === 'scale' ? badNumber(g) : badInt(g, 4, true);
    cfg[key] = x.v;
    d += ` with ${key}=${x.d}`;
  }
  return { v: cfg as unknown as Kv.MhaConfig, d, dims };
}

function apiMha(g: Gen, api: Api): Call {
  const cfg = mhaConfigV(g), { dims } = cfg;
  const B = g.range(1, 2), T = g.range(1, 8), S = g.range(1, 10);
  const xQ = tensorV(g, [B, T, dims.dModel], 0.1), xKv = g.chance(0.1) ? { v: null, d: 'null' } : tensorV(g, [B, S, dims.dKvIn], 0.1);
  const useCache = g.chance(0.4);
  const cacheBatch = g.chance(0.9) ? B : B + 1, cacheCap = g.chance(0.5) ? undefined : 2;
  const o = optionsV(g, { causal: () => boolV(g), qOffset: () => (g.chance(0.8) ? { v: g.range(-2, S), d: 'qOffset' } : badInt(g, 0, true)), dropout: () => dropoutV(g), returnWeights: () => boolV(g) });
  const which = g.int(5);
  const o2 = g.chance(0.5) ? tensorV(g, [B, dims.H, T, dims.dV], 0.2) : null;
  const projOut = g.chance(0.5) ? { v: undefined, d: '' } : outV(g, which === 2 ? [B, dims.H, T, dims.dK] : [B, T, dims.dModel], () => (which === 4 ? (o2 ?? xQ).v : xQ.v));
  if (g.chance(0.3)) setField(o.v, 'out', { output: outV(g, [B, T, dims.dModel], () => xQ.v).v, lse: outV(g, [B, dims.H, T], () => xKv.v).v });
  return {
    target: 'api.MultiHeadAttention',
    d: `random(${cfg.d}).${['forward', 'forward', 'projectQ', 'projectKv', 'projectOut'][which]}(${xQ.d}, ${xKv.d}, ${o.d}${useCache ? ', cache' : ''}${projOut.d ? `, out ${projOut.d}` : ''})`,
    run: () => {
      const mha = api.kv.MultiHeadAttention.random(cfg.v, 1);
      const opts = o.v as Kv.ForwardOptions;
      if (useCache) setField(opts, 'cache', mha.newCache(cacheBatch, cacheCap));
      switch (which) {
        case 2: return mha.projectQ(xQ.v as Kv.Tensor, projOut.v as Kv.Tensor);
        case 3: return mha.projectKv(xKv.v as Kv.Tensor);
        case 4: return mha.projectOut((o2 ?? xQ).v as Kv.Tensor, projOut.v as Kv.Tensor);
        default: return mha.forward(xQ.v as Kv.Tensor, xKv.v as Kv.Tensor, opts);
      }
    },
  };
}

function apiOperators(g: Gen, api: Api): Call {
  const cfg = mhaConfigV(g), { dims } = cfg;
  const B = g.range(1, 2), S = g.range(1, 12), T = g.range(1, 4);
  const x = tensorV(g, [B, S, dims.dKvIn], 0.05), xQ = tensorV(g, [B, T, dims.dModel], 0.05);
  const chunking: V = g.chance(0.8) ? { v: g.range(1, 5), d: 'n' } : g.chance(0.5) ? { v: [S - 1, 1], d: `[${S - 1},1]` } : badInt(g, 2, true);
  const kind = g.int(4);
  const async = g.chance(0.3);
  const attendOpts = optionsV(g, { causal: () => boolV(g), qOffset: () => ({ v: g.range(-2, S), d: 'qOffset' }), dropout: () => dropoutV(g), sOffset: () => (g.chance(0.8) ? { v: g.range(0, 5), d: 'sOffset' } : badInt(g, 0, true)) });
  if (async) setField(attendOpts.v, 'async', true);
  const names = ['splitTokens.projectKv.attendChunk', 'splitTokens.projectKv.appendKv', 'splitTokens.prefillChunk', 'chunkSizes/sliceTokens/concatTokens'];
  return {
    target: 'api.operators',
    d: `${names[kind]}(${cfg.d}, x ${x.d}, xQ ${xQ.d}, chunking ${chunking.d}, ${attendOpts.d})`,
    run: async () => {
      const kv = api.kv;
      const mha = kv.MultiHeadAttention.random(cfg.v, 2);
      const src = () => kv.splitTokens(x.v as Kv.Tensor, chunking.v as number);
      const createCache = () => mha.newCache(B, g.range(1, 4));
      switch (kind) {
        case 0: return lastValueFrom(src().pipe(kv.projectKv(mha), kv.attendChunk(mha, xQ.v as Kv.Tensor, attendOpts.v as Kv.AttendOptions), toArray()));
        case 1: return lastValueFrom(src().pipe(kv.projectKv(mha), kv.appendKv(createCache), toArray()));
        case 2: return lastValueFrom(src().pipe(kv.prefillChunk(mha, createCache, { dropout: (attendOpts.v as { dropout?: Kv.Dropout } | null)?.dropout }), toArray()));
        default: {
          const sizes = kv.chunkSizes(S, chunking.v as number);
          const parts = sizes.map((_, i) => kv.sliceTokens(x.v as Kv.Tensor, i, i + 1));
          return kv.concatTokens(parts);
        }
      }
    },
  };
}

/** A source of items: a sync iterable, an async generator, or one that throws after some items. */
function sourceV(g: Gen, items: V[]): V {
  const list = items.map((x) => x.v), d = `[${items.map((x) => x.d).join(', ')}]`;
  switch (g.int(4)) {
    case 0: return { v: list, d: `Array${d}` };
    case 1: return { v: (async function* () { for (const x of list) yield x; })(), d: `async generator${d}` };
    case 2: { const at = g.int(list.length + 1); return { v: (function* () { for (let i = 0; i < list.length; i++) { if (i === at) throw new FuzzTrap('source'); yield list[i]; } if (at === list.length) throw new FuzzTrap('source end'); })(), d: `generator throwing at ${at} of ${d}` }; }
    default: return g.chance(0.8) ? { v: new Set(list), d: `Set${d}` } : scalar(g);
  }
}

/** fromTokens and fromNpyBytes (src/streams) into projectKv + attendChunk, collected. */
function apiStreams(g: Gen, api: Api): Call {
  const cfg = mhaConfigV(g), { dims } = cfg;
  const B = g.chance(0.8) ? 1 : 2, xQ = tensorV(g, [B, g.range(1, 3), dims.dModel], 0.05);
  const chunking: V = g.chance(0.4) ? { v: undefined, d: 'none' } : g.chance(0.8) ? { v: g.range(1, 4), d: 'n' } : badInt(g, 2, true);
  const npy = g.chance(0.4);
  let src: V;
  if (npy) {
    const S = g.range(1, 8);
    const bytes = api.kv.encodeNpy({ data: new Float32Array(B * S * dims.dKvIn).fill(0.5), shape: [B, S, dims.dKvIn] });
    for (let n = g.chance(0.7) ? 0 : g.range(1, 3); n > 0; n--) bytes[g.int(bytes.length)] = g.u32() & 255;
    const pieces: V[] = [];
    for (let at = 0; at < bytes.length;) { const n = g.range(1, 40); pieces.push({ v: bytes.subarray(at, at + n), d: `${Math.min(n, bytes.length - at)}B` }); at += n; }
    if (g.chance(0.1)) pieces.push(g.chance(0.5) ? { v: new Uint8Array(3), d: 'extra 3B' } : scalar(g));
    src = sourceV(g, pieces);
  } else {
    const items: V[] = [];
    for (let n = g.range(0, 6); n > 0; n--) {
      if (g.chance(0.9)) items.push(B === 1 && g.chance(0.5) ? f32(g, dims.dKvIn) : tensorV(g, [B, g.range(1, 3), dims.dKvIn], 0.05));
      else items.push(g.chance(0.5) ? badF32(g, dims.dKvIn) : scalar(g));
    }
    src = sourceV(g, items);
  }
  return {
    target: 'api.streams',
    d: `${npy ? 'fromNpyBytes' : 'fromTokens'}(${src.d}, chunking ${chunking.d}).projectKv.attendChunk(${cfg.d})`,
    run: async () => {
      const st = api.streams;
      if (!st) return;
      const mha = api.kv.MultiHeadAttention.random(cfg.v, 3);
      const source = npy
        ? st.fromNpyBytes(src.v as Iterable<Uint8Array>, (chunking.v ?? 2) as number)
        : st.fromTokens(src.v as Iterable<Float32Array>, chunking.v === undefined ? {} : { chunking: chunking.v as number });
      return lastValueFrom(source.pipe(api.kv.projectKv(mha), api.kv.attendChunk(mha, xQ.v as Kv.Tensor), toArray()));
    },
  };
}

function apiMisc(g: Gen, api: Api): Call {
  const which = g.chance(0.1) ? 0 : g.range(1, 3);
  const x = which === 0 ? (g.chance(0.8) ? { v: g.range(1, 4), d: 'n' } : badInt(g, 2, true)) : scalar(g);
  const shape = [g.range(1, 3), g.range(1, 3)];
  const t = tensorV(g, shape, 0.3);
  const d = ['setNumThreads', 'info', 'tensor', 'encodeNpy/decodeNpy'][which];
  return {
    target: `api.${d}`,
    d: `${x.d}, ${t.d}`,
    state: which === 0,
    run: () => {
      const kv = api.kv;
      switch (which) {
        case 0: return kv.setNumThreads(x.v as number);
        case 1: return kv.info();
        case 2: { const tt = t.v as { data?: Float32Array; shape?: number[] } | null; return kv.tensor(tt?.data as Float32Array, tt?.shape as number[]); }
        default: {
          const bytes = kv.encodeNpy({ data: new Float32Array(6), shape: [2, 3] });
          for (let n = g.range(0, 3); n > 0; n--) bytes[g.int(bytes.length)] = g.u32() & 255;
          return kv.decodeNpy(g.chance(0.9) ? bytes : bytes.subarray(0, g.int(bytes.length)), 'fuzz.npy');
        }
      }
    },
  };
}

const API: Record<string, Maker> = {
  'api.attention': apiAttention, 'api.OnlineSoftmaxState': apiState, 'api.KvCache': apiKvCache,
  'api.MultiHeadAttention': apiMha, 'api.operators': apiOperators, 'api.misc': apiMisc, 'api.streams': apiStreams,
};

/** Kernels on worker_threads (each loads the addon) and the main thread at once; sometimes terminated mid-call. */
function workerThreads(g: Gen, api: Api): Call {
  const n = g.range(1, 2), terminate = g.chance(0.5), N = g.pick([64, 300, 1024]);
  return {
    target: 'worker_threads',
    d: `${n} worker(s) running linear(64x64x${N}) while the main thread does${terminate ? ', terminated mid-run' : ''}`,
    run: () => runWorkerThreads(api, n, terminate, N),
    state: true, // the workers set the (process-wide) thread count
  };
}

async function runWorkerThreads(api: Api, n: number, terminate: boolean, N: number): Promise<void> {
  const { Worker } = await import('node:worker_threads');
  const addonPath = new URL('../build/Release/kvstream.node', import.meta.url).pathname;
  const code = `const { parentPort, workerData } = require('node:worker_threads');
const b = require(workerData.path); const N = workerData.N;
const x = new Float32Array(64 * 64), w = new Float32Array(64 * N), y = new Float32Array(64 * N);
for (let i = 0; i < 20; i++) b.linear(x, w, null, y, 64, 64, N);
b.setNumThreads(1 + (workerData.i % 2));
parentPort.postMessage('done');`;
  const errors: unknown[] = [];
  const workers = Array.from({ length: n }, (_, i) => new Worker(code, { eval: true, workerData: { path: addonPath, N, i } }).on('error', (e) => errors.push(e)));
  const x = new Float32Array(64 * 64), w = new Float32Array(64 * N), y = new Float32Array(64 * N);
  for (let i = 0; i < 10; i++) api.binding.linear(x, w, null, y, 64, 64, N);
  if (terminate) await Promise.all(workers.map((wk) => wk.terminate()));
  else await Promise.all(workers.map((wk) => new Promise<void>((res) => { wk.once('message', () => void wk.terminate().then(() => res())); wk.once('exit', () => res()); })));
  if (errors.length) throw errors[0];
}

// A worker_threads isolate that queues attnUpdateAsync folds (contiguous or paged, f32 or int8
// with scales) and posts 'queued'; then, by workerData.end: 'exit' calls process.exit() in the
// worker, 'throw' throws uncaught, 'detach' detaches every buffer first, 'wait' lets the folds
// finish. With w.chain, each completion callback queues another fold on the same arrays (up to
// w.chain more), so folds are still being queued while the isolate is torn down. The isolate
// cleanup hook must drain the folds before the isolate goes.
const ASYNC_WORKER = `const { parentPort, workerData: w } = require('node:worker_threads');
const b = require(w.path);
const F = (n) => new Float32Array(n).fill(0.01);
const d = { B: 1, H: w.H, Hkv: w.H, T: w.T, S: w.S, sCap: w.S, dK: 64, dV: 64 };
const o = { scale: 0.125, causal: w.causal, qOffset: w.S - w.T, sOffset: 0, dropoutP: 0, seed: 0 };
const rows = w.H * w.T, kvN = w.H * w.S * 64;
let pending = 0, chain = w.chain;
const all = [];
for (let i = 0; i < w.folds; i++) {
  const opts = { ...o };
  let k, v, extra = [];
  if (w.i8) { opts.kvDtype = 'i8'; k = new Int8Array(kvN).fill(3); v = new Int8Array(kvN).fill(-3); extra = [F(w.H * w.S * 2), F(w.H * w.S * 2)]; }
  else { k = F(kvN); v = F(kvN); }
  if (w.paged) { opts.pageSize = 16; opts.blockTable = Int32Array.from({ length: w.S / 16 }, (_, j) => (w.S / 16 - 1 - j)); }
  if (w.i8) extra = [F(w.H * w.S * 2), F(w.H * w.S * 2)];
  const arrs = [F(rows * 64), k, v, F(rows).fill(-Infinity), F(rows), F(rows * 64), ...extra];
  all.push(...arrs);
  const fold = () => {
    pending++;
    b.attnUpdateAsync(d, opts, ...arrs, () => {
      if (chain > 0) { chain--; fold(); }
      if (--pending === 0 && w.end === 'wait') parentPort.postMessage('done');
    });
  };
  fold();
}
if (w.end === 'detach') for (const a of all) structuredClone(a.buffer, { transfer: [a.buffer] });
parentPort.postMessage('queued');
if (w.end === 'exit') process.exit(w.code);
if (w.end === 'throw') throw new Error('worker throws with folds queued');`;

/** worker_threads queueing attnUpdateAsync, then terminated, exiting, throwing, or left to finish. */
export function workerAsync(g: Gen, api: Api): Call {
  const n = g.range(1, 2);
  const cfg = Array.from({ length: n }, () => ({
    H: g.pick([1, 4, 8]), T: g.pick([1, 16, 64, 256]), S: g.pick([64, 256, 2048]), causal: g.chance(0.5),
    folds: g.range(1, 4), i8: g.chance(0.3), paged: g.chance(0.4), code: g.pick([0, 1, 7]), chain: g.chance(0.3) ? g.pick([1, 3, 20]) : 0,
    end: g.pick(['terminate', 'terminate', 'terminate-now', 'exit', 'throw', 'detach', 'wait'] as const),
  })).map((c) => (c.end === 'wait' ? { ...c, chain: Math.min(c.chain, 3) } : c)); // waiting on 20 more large folds is slow
  const mainToo = g.chance(0.5);
  return {
    target: 'worker_threads.async',
    d: `${cfg.map((c) => `worker queues ${c.folds} attnUpdateAsync(H ${c.H}, T ${c.T}, S ${c.S}${c.i8 ? ', i8' : ''}${c.paged ? ', paged' : ''})${c.chain ? `, each callback queueing another (${c.chain} more),` : ''} then ${c.end}${c.end === 'exit' ? `(${c.code})` : ''}`).join('; ')}${mainToo ? '; main thread folds too' : ''}`,
    state: true,
    run: async () => {
      const { Worker } = await import('node:worker_threads');
      const path = new URL('../build/Release/kvstream.node', import.meta.url).pathname;
      const runs = cfg.map((c) => new Promise<void>((res) => {
        const wk = new Worker(ASYNC_WORKER, { eval: true, workerData: { path, ...c } });
        wk.on('error', () => { /* the 'throw' ending; errors in the worker are its own */ });
        wk.once('exit', () => res());
        if (c.end === 'terminate-now') void wk.terminate();
        wk.on('message', (m) => { if (m === 'done' || c.end.startsWith('terminate') || c.end === 'detach') void wk.terminate(); });
      }));
      if (mainToo) {
        await new Promise<void>((res, rej) => {
          const f = (k: number) => new Float32Array(k);
          const d = { B: 1, H: 4, Hkv: 4, T: 16, S: 512, sCap: 512, dK: 64, dV: 64 };
          api.binding.attnUpdateAsync(d, { scale: 0.125, causal: true, qOffset: 496, sOffset: 0, dropoutP: 0, seed: 0 }, f(4096), f(131072), f(131072), f(64), f(64), f(4096), (e?: Error) => (e ? rej(e) : res()));
        });
      }
      await Promise.all(runs);
    },
  };
}

/**
 * The main thread calling process.exit() while a worker's (or its own) attnUpdateAsync runs:
 * in a separate process (it ends it). A crash there is re-raised here, so it is reported and
 * replayed like any other.
 */
export function processExit(g: Gen): Call {
  const inWorker = g.chance(0.7), code = g.pick([0, 2]), chain = g.chance(0.5) ? 20 : 0;
  return {
    target: 'process.exit',
    d: `process.exit(${code}) on the main thread while ${inWorker ? "a worker's" : 'its own'} attnUpdateAsync runs${chain ? ' (callbacks queueing more)' : ''}`,
    run: async () => {
      const { spawnSync } = await import('node:child_process');
      const path = new URL('../build/Release/kvstream.node', import.meta.url).pathname;
      const wd = JSON.stringify({ path, H: 8, T: 256, S: 2048, causal: false, folds: 2, i8: false, paged: false, code: 0, end: 'wait', chain });
      const script = inWorker
        ? `const { Worker } = require('node:worker_threads'); const w = new Worker(${JSON.stringify(ASYNC_WORKER)}, { eval: true, workerData: ${wd} }); w.on('message', () => process.exit(${code})); w.on('error', (e) => { console.error('worker error: ' + e.message); process.exit(97); });`
        : `const w = ${wd}; const parentPort = { postMessage() {} }; ${ASYNC_WORKER.replace(/^const \{ parentPort, workerData: w \} = require\('node:worker_threads'\);/, '')}\nprocess.exit(${code});`;
      const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
      if (r.signal) {
        process.stderr.write(`fuzz worker: the process.exit subprocess died by ${r.signal}: ${r.stderr.slice(-1500)}\n`);
        process.kill(process.pid, r.signal);
      }
      // 97: the worker threw (e.g. the addon failed to load while the lead rebuilt it).
      if (r.status !== code) {
        process.stderr.write(`fuzz worker: the process.exit(${code}) subprocess exited with ${r.status}: ${r.stderr.slice(-3000)}\n`);
        throw new FuzzCheck(`the process.exit(${code}) subprocess exited with ${r.status}: ${r.stderr.split('\n').find((l) => /Error|error/.test(l))?.slice(0, 200) ?? r.stderr.slice(0, 200)}`);
      }
    },
  };
}

/**
 * Call `index` of `seed`: an addon export (about 70%, each export equally likely), a public API
 * entry point (about 30%), or rarely kernels on worker_threads.
 */
export function makeCall(seed: number, index: number, api: Api): Call {
  const g = new Gen(seed, index);
  if (g.chance(0.0002)) return workerThreads(g, api);
  if (g.chance(0.0004)) return workerAsync(g, api);
  if (g.chance(0.00005)) return processExit(g);
  if (g.chance(0.25)) return pickWeighted(g, Object.keys(API), API_WEIGHT, (t) => API[t])(g, api);
  return pickWeighted(g, Object.keys(api.binding).sort(), EXPORT_WEIGHT, (t) => EXPORTS[t] ?? generic(t))(g, api);
}

// Relative weights (default 1): a valid setNumThreads rebuilds the pool (milliseconds), the
// operators build RxJS pipelines and modules; the trivial getters need few calls.
const EXPORT_WEIGHT: Record<string, number> = { setNumThreads: 0.25, info: 0.3, getKernelPath: 0.3, kernelCounts: 0.3, resetKernelCounts: 0.3 };
const API_WEIGHT: Record<string, number> = { 'api.operators': 0.5, 'api.misc': 0.5, 'api.streams': 0.4 };

function pickWeighted(g: Gen, names: string[], weight: Record<string, number>, make: (t: string) => Maker): Maker {
  const total = names.reduce((a, t) => a + (weight[t] ?? 1), 0);
  let x = g.u32() * 2 ** -32 * total;
  for (const t of names) if ((x -= weight[t] ?? 1) < 0) return make(t);
  return make(names[names.length - 1]);
}

