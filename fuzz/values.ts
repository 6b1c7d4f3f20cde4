// Random and adversarial argument values for the fuzzer. Every value comes with a short
// description (`d`) for crash reports; nothing here calls the addon.
import { types } from 'node:util';
import vm from 'node:vm';
import { Rng } from '../src/random.ts';

/** A generated value and how to print it. */
export interface V {
  v: unknown;
  d: string;
}

/** The error our own traps and getters throw: propagating it (bare or as a cause) is fine. */
export class FuzzTrap extends Error {
  constructor(where: string) {
    super(`fuzz trap: ${where}`);
    this.name = 'FuzzTrap';
  }
}

/**
 * Per-call random source: sfc32 seeded with the first Philox block of stream `call` of `seed`
 * (src/random.ts), so call i is reproducible alone and draws cost a few integer operations.
 */
export class Gen {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number, call: number) {
    const r = new Rng(seed, call);
    [this.a, this.b, this.c, this.d] = [r.nextUint32(), r.nextUint32(), r.nextUint32(), r.nextUint32()];
  }
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return n <= 1 ? 0 : this.u32() % n;
  }
  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.u32() * 2 ** -32 < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }
}

// ---- typed arrays -------------------------------------------------------------------------

const SPECIAL = [NaN, Infinity, -Infinity, 3.4e38, -3.4e38, 1e-45, 0, -0, 1, -1e30];

/** Fills `a` (any Float32Array) with zeros (as made), small uniforms, special values, or large values. */
export function fill(g: Gen, a: Float32Array): string {
  const n = a.length;
  const mode = g.int(8);
  if (mode === 0 || n === 0) return '';
  if (n > 65536) {
    // Large (valid) calls are about the kernel paths they reach; a constant keeps them cheap.
    a.fill(mode === 6 ? NaN : 0.25);
    return mode === 6 ? ' NaN' : ' 0.25';
  }
  // A pattern of up to 64 values, tiled with the typed-array set (fast for any element kind).
  const pattern = new Float32Array(Math.min(n, 64));
  let x = g.u32() | 1;
  let how = '';
  if (mode <= 4) {
    for (let i = 0; i < pattern.length; i++) {
      x = Math.imul(x, 1664525) + 1013904223;
      pattern[i] = (x >>> 8) * 2 ** -22 - 2;
    }
  } else if (mode === 5) {
    for (let i = 0; i < pattern.length; i++) pattern[i] = SPECIAL[(i + x) % SPECIAL.length];
    how = ' special';
  } else if (mode === 6) {
    pattern.fill(NaN);
    how = ' NaN';
  } else {
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i & 1 ? -1 : 1) * 1e30;
    how = ' 1e30';
  }
  for (let i = 0; i < n; i += pattern.length) setAt(a, i + pattern.length <= n ? pattern : pattern.subarray(0, n - i), i);
  return how;
}

const setAt: (a: Float32Array, src: Float32Array, at: number) => void = Function.prototype.call.bind(Float32Array.prototype.set) as never;

class SubF32 extends Float32Array {}
let RealmF32: Float32ArrayConstructor | undefined;

/** Detaches `buf` (its memory goes to a clone that is dropped at once). */
export function detach(buf: ArrayBufferLike): void {
  if (types.isArrayBuffer(buf)) {
    try {
      structuredClone(buf, { transfer: [buf] });
    } catch {
      /* already detached or not transferable */
    }
  }
}

type RAB = ArrayBuffer & { resize(n: number): void; resizable: boolean };
type GSAB = SharedArrayBuffer & { grow(n: number): void; growable: boolean };
const newRab = (bytes: number, max: number) => new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => RAB)(bytes, { maxByteLength: max });
const newGsab = (bytes: number, max: number) => new (SharedArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => GSAB)(bytes, { maxByteLength: max });

/** Kinds of Float32Array that hold exactly n floats and must be accepted (or refused cleanly). */
export const F32_OK = ['plain', 'plain', 'plain', 'plain', 'sub', 'sab', 'rab', 'rab-track', 'gsab', 'subclass', 'realm', 'length-getter'] as const;

/** A Float32Array of n floats in one of the accepted forms. */
export function f32(g: Gen, n: number, kind: string = g.chance(0.85) ? 'plain' : g.pick(F32_OK)): V {
  let a: Float32Array;
  switch (kind) {
    case 'sub': {
      const off = g.range(1, 9);
      a = new Float32Array(n + off + g.int(5)).subarray(off, off + n);
      kind = `subarray(${off})`;
      break;
    }
    case 'sab':
      a = new Float32Array(new SharedArrayBuffer(4 * n));
      break;
    case 'rab':
      a = new Float32Array(newRab(4 * n + 8, 4 * n + 64), 0, n);
      break;
    case 'rab-track':
      a = new Float32Array(newRab(4 * n, 4 * n + 64));
      break;
    case 'gsab':
      a = new Float32Array(newGsab(4 * n, 4 * n + 64));
      break;
    case 'subclass':
      a = new SubF32(n);
      break;
    case 'realm':
      RealmF32 ??= vm.runInNewContext('Float32Array') as Float32ArrayConstructor;
      a = new RealmF32(n);
      break;
    case 'length-getter':
      a = new Float32Array(n);
      break;
    default:
      a = new Float32Array(n);
      kind = '';
  }
  const how = fill(g, a);
  if (kind === 'length-getter') Object.defineProperty(a, 'length', { get: () => { throw new FuzzTrap('length getter'); } });
  return { v: a, d: `f32(${n}${kind ? ' ' + kind : ''}${how})` };
}

/** A value in place of a Float32Array of n floats that is wrong in size, type or state. */
export function badF32(g: Gen, n: number): V {
  switch (g.int(24)) {
    case 0: return n > 0 ? { v: new Float32Array(n - 1), d: `f32(${n - 1} short)` } : { v: new Float32Array(1), d: 'f32(1 long)' };
    case 1: return { v: new Float32Array(n + 1), d: `f32(${n + 1} long)` };
    case 2: {
      const a = new Float32Array(Math.max(n, 1));
      detach(a.buffer);
      return { v: a, d: `f32(detached, was ${Math.max(n, 1)})` };
    }
    case 3: {
      const rab = newRab(4 * n + 16, 4 * n + 64);
      const a = new Float32Array(rab, 16, n);
      rab.resize(8);
      return { v: a, d: `f32(${n} rab out of bounds)` };
    }
    case 4: {
      const rab = newRab(4 * n, 4 * n + 64);
      const a = new Float32Array(rab);
      rab.resize(Math.max(0, 4 * n - 4));
      return { v: a, d: `f32(rab-track shrunk to ${Math.max(0, n - 1)})` };
    }
    case 5: return { v: new Float64Array(n), d: `f64(${n})` };
    case 6: return { v: new Int32Array(n), d: `i32(${n})` };
    case 7: return { v: new Uint8Array(4 * n), d: `u8(${4 * n})` };
    case 8: return { v: Buffer.alloc(4 * n), d: `Buffer(${4 * n})` };
    case 9: return { v: new BigInt64Array(n), d: `BigInt64Array(${n})` };
    case 10: return { v: new DataView(new ArrayBuffer(4 * n)), d: 'DataView' };
    case 11: return { v: new ArrayBuffer(4 * n), d: 'ArrayBuffer' };
    case 12: return { v: Array.from({ length: Math.min(n, 64) }, () => 0), d: `Array(${Math.min(n, 64)})` };
    case 13: return { v: new Proxy(new Float32Array(n), {}), d: `Proxy(f32(${n}))` };
    case 14: return { v: { length: n, 0: 1 }, d: `{length:${n}}` };
    case 15: {
      const a = new Float32Array(n + 4);
      return { v: a.subarray(4), d: `f32(${n} subarray(4))` };
    }
    case 16: return { v: Object.setPrototypeOf({ length: n }, Float32Array.prototype), d: 'fake Float32Array (prototype only)' };
    case 17: return { v: new Float16ArrayOr(n), d: `Float16Array-or-u16(${n})` };
    default: return scalar(g);
  }
}

/** Float16Array when the engine has it, else Uint16Array: another 2-byte element type. */
const Float16ArrayOr = ((globalThis as Record<string, unknown>).Float16Array ?? Uint16Array) as unknown as new (n: number) => ArrayBufferView;

/** Cache storage element types by opts.kvDtype (f32 storage is f32()). */
export const STORAGE = { f16: Uint16Array, bf16: Uint16Array, i8: Int8Array } as const;
export type KvDtype = 'f32' | keyof typeof STORAGE;

/** A Uint16Array (f16/bf16 bits) or Int8Array (int8) of n elements with random bits, in an accepted form. */
export function storage(g: Gen, dtype: keyof typeof STORAGE, n: number): V {
  const C = STORAGE[dtype];
  const kind = g.chance(0.85) ? 'plain' : g.pick(['sub', 'sab', 'rab-track', 'detached']);
  let a: Uint16Array | Int8Array;
  if (kind === 'sub') a = new C(n + 3).subarray(3);
  else if (kind === 'sab') a = new C(new SharedArrayBuffer(n * C.BYTES_PER_ELEMENT) as unknown as ArrayBuffer);
  else if (kind === 'rab-track') a = new C(newRab(n * C.BYTES_PER_ELEMENT, n * C.BYTES_PER_ELEMENT + 64));
  else a = new C(n);
  // Random bits: every f16/bf16 pattern (NaN, Inf, subnormals) and every int8 value.
  let x = g.u32() | 1;
  for (let i = 0; i < Math.min(n, 4096); i++) {
    x = Math.imul(x, 1664525) + 1013904223;
    a[i] = x >>> 16;
  }
  if (kind === 'detached') detach(a.buffer);
  return { v: a, d: `${dtype}(${n}${kind === 'plain' ? '' : ' ' + kind})` };
}

/** A Uint8Array of n bytes (accepted forms), or null. */
export function u8(g: Gen, n: number): V {
  if (g.chance(0.8)) return { v: new Uint8Array(n), d: `u8(${n})` };
  switch (g.int(4)) {
    case 0: return { v: new Uint8Array(new SharedArrayBuffer(n)), d: `u8(${n} sab)` };
    case 1: return { v: new Uint8Array(newRab(n, n + 16)), d: `u8(${n} rab-track)` };
    case 2: return { v: Buffer.alloc(n), d: `Buffer(${n})` };
    default: return { v: new Uint8Array(n + 3).subarray(3), d: `u8(${n} subarray(3))` };
  }
}

export function badU8(g: Gen, n: number): V {
  switch (g.int(6)) {
    case 0: return { v: new Uint8Array(n + 1), d: `u8(${n + 1} long)` };
    case 1: return n > 0 ? { v: new Uint8Array(n - 1), d: `u8(${n - 1} short)` } : { v: new Uint8Array(1), d: 'u8(1 long)' };
    case 2: return { v: new Uint8ClampedArray(n), d: `u8clamped(${n})` };
    case 3: return { v: new Int8Array(n), d: `i8(${n})` };
    case 4: {
      const a = new Uint8Array(Math.max(n, 1));
      detach(a.buffer);
      return { v: a, d: 'u8(detached)' };
    }
    default: return scalar(g);
  }
}

// ---- scalars and objects ------------------------------------------------------------------

/** Any value that is neither a valid size nor an array: the wrong-type pool. */
export function scalar(g: Gen): V {
  switch (g.int(22)) {
    case 0: return { v: undefined, d: 'undefined' };
    case 1: return { v: null, d: 'null' };
    case 2: return { v: true, d: 'true' };
    case 3: return { v: '4', d: "'4'" };
    case 4: return { v: 4n, d: '4n' };
    case 5: return { v: Symbol('fuzz'), d: 'Symbol()' };
    case 6: return { v: {}, d: '{}' };
    case 7: return { v: [], d: '[]' };
    case 8: return { v: () => 0, d: 'function' };
    case 9: return { v: new Number(4), d: 'new Number(4)' };
    case 10: return { v: { valueOf: () => 4 }, d: '{valueOf:4}' };
    case 11: return { v: { valueOf: () => { throw new FuzzTrap('valueOf'); } }, d: '{valueOf throws}' };
    case 12: return { v: throwingProxy({}), d: 'Proxy(throwing traps)' };
    case 13: return { v: revoked(), d: 'revoked Proxy' };
    case 14: return { v: NaN, d: 'NaN' };
    case 15: return { v: -1, d: '-1' };
    case 16: return { v: new Date(0), d: 'Date' };
    case 17: return { v: /x/, d: 'RegExp' };
    case 18: return { v: new Map(), d: 'Map' };
    case 19: return { v: Promise.resolve(4), d: 'Promise' };
    case 20: return { v: new Error('x'), d: 'Error' };
    default: return { v: '', d: "''" };
  }
}

/**
 * A number where an integer size `valid` is expected: off by one, negative, fractional, NaN, huge, ...
 * `api`: for the public API, which allocates from sizes it accepts, leave out 2^31-1 (accepted,
 * and e.g. a 2 x (2^31-1) weight matrix is 16 GB).
 */
export function badInt(g: Gen, valid: number, api = false): V {
  const pool: V[] = [
    { v: 0, d: '0' }, { v: -1, d: '-1' }, { v: -0, d: '-0' }, { v: valid + 0.5, d: `${valid + 0.5}` },
    { v: valid + 1, d: `${valid + 1}` }, { v: valid - 1, d: `${valid - 1}` }, { v: valid * 2, d: `${valid * 2}` },
    { v: NaN, d: 'NaN' }, { v: Infinity, d: 'Infinity' }, { v: -Infinity, d: '-Infinity' },
    { v: 2 ** 31 - 1, d: '2^31-1' }, { v: 2 ** 31, d: '2^31' }, { v: 2 ** 32, d: '2^32' }, { v: 2 ** 32 + valid, d: `2^32+${valid}` },
    { v: 2 ** 53, d: '2^53' }, { v: 1e308, d: '1e308' }, { v: -(2 ** 31), d: '-2^31' }, { v: Number.MIN_VALUE, d: '5e-324' },
    { v: Number.EPSILON, d: 'EPSILON' }, { v: -(2 ** 63), d: '-2^63' },
  ];
  return g.chance(0.8) ? g.pick(api ? pool.filter((x) => x.d !== '2^31-1') : pool) : scalar(g);
}

/** A float where a finite number is expected (scale, dropout p). */
export function badNumber(g: Gen): V {
  const pool = [NaN, Infinity, -Infinity, 3.4e38, 3.5e38, -3.5e38, -0, 1e-45, 1, 0.9999999, 1.0000001, -1e-9, 1e308];
  if (g.chance(0.8)) {
    const v = g.pick(pool);
    return { v, d: Object.is(v, -0) ? '-0' : String(v) };
  }
  return scalar(g);
}

export function throwingProxy<T extends object>(target: T, onlyKey?: string): T {
  const trap = (name: string) => (...a: unknown[]) => {
    if (onlyKey === undefined || a[1] === onlyKey) throw new FuzzTrap(`proxy ${name}${onlyKey ? ' ' + onlyKey : ''}`);
    return (Reflect as unknown as Record<string, (...x: unknown[]) => unknown>)[name](...a);
  };
  return new Proxy(target, {
    get: trap('get'), has: trap('has'), ownKeys: trap('ownKeys'), getOwnPropertyDescriptor: trap('getOwnPropertyDescriptor'),
    getPrototypeOf: trap('getPrototypeOf'), set: trap('set'), defineProperty: trap('defineProperty'),
  } as ProxyHandler<T>);
}

function revoked(): object {
  const r = Proxy.revocable({}, {});
  r.revoke();
  return r.proxy;
}

/**
 * An object with the given fields, in a form chosen at random: plain, getters, a Proxy (pass-
 * through, throwing, revoked), inherited fields, a null prototype, an Array or function carrying
 * the fields, or a field whose getter runs `sideEffect` (which may detach buffers or re-enter the
 * addon). `fields` values are already generated (possibly bad).
 */
export function object(g: Gen, fields: Record<string, V>, sideEffect?: (g: Gen) => V | undefined): V {
  const keys = Object.keys(fields);
  const plain: Record<string, unknown> = {};
  for (const k of keys) plain[k] = fields[k].v;
  const desc = `{${keys.map((k) => `${k}:${fields[k].d}`).join(',')}}`;
  if (g.chance(0.75)) return { v: plain, d: desc };
  const key = g.pick(keys);
  switch (g.int(13)) {
    case 0: {
      const o = {};
      for (const k of keys) Object.defineProperty(o, k, { get: () => plain[k], enumerable: true });
      return { v: o, d: `getters ${desc}` };
    }
    case 1: {
      const o = { ...plain };
      Object.defineProperty(o, key, { get: () => { throw new FuzzTrap(`getter ${key}`); } });
      return { v: o, d: `${desc} with throwing getter ${key}` };
    }
    case 2: return { v: new Proxy(plain, {}), d: `Proxy${desc}` };
    case 3: return { v: throwingProxy(plain), d: `Proxy(all traps throw)${desc}` };
    case 4: return { v: throwingProxy(plain, key), d: `Proxy(get ${key} throws)${desc}` };
    case 5: return { v: revoked(), d: 'revoked Proxy' };
    case 6: return { v: Object.create(plain), d: `Object.create(${desc})` };
    case 7: return { v: Object.assign(Object.create(null), plain), d: `null-proto ${desc}` };
    case 8: return { v: Object.assign([], plain), d: `Array+${desc}` };
    case 9: return { v: Object.assign(() => 0, plain), d: `function+${desc}` };
    case 10: {
      const o = { ...plain };
      delete o[key];
      return { v: o, d: `${desc} without ${key}` };
    }
    case 11: {
      const effect = sideEffect?.(g);
      if (!effect) return { v: Object.freeze(plain), d: `frozen ${desc}` };
      const o = { ...plain };
      Object.defineProperty(o, key, { get: () => ((effect.v as () => void)(), plain[key]), enumerable: true });
      return { v: o, d: `${desc} with getter ${key} that ${effect.d}` };
    }
    default: return scalar(g);
  }
}

/** An Int32Array holding `vals`, in an accepted form (plain, subarray, shared, length-tracking resizable). */
export function i32(g: Gen, vals: ArrayLike<number>): V {
  const n = vals.length;
  const kind = g.chance(0.85) ? 'plain' : g.pick(['sub', 'sab', 'rab-track']);
  let a: Int32Array;
  if (kind === 'sub') a = new Int32Array(n + 2).subarray(2);
  else if (kind === 'sab') a = new Int32Array(new SharedArrayBuffer(4 * n));
  else if (kind === 'rab-track') a = new Int32Array(newRab(4 * n, 4 * n + 64));
  else a = new Int32Array(n);
  a.set(vals);
  return { v: a, d: `${viewD(a)}${kind === 'plain' ? '' : ' ' + kind}` };
}

/** A short description of a typed array: its type, length and first values. */
export function viewD(a: ArrayBufferView): string {
  const t = a as unknown as { length?: number; [i: number]: unknown };
  let n: number;
  try { n = t.length ?? a.byteLength; } catch { return 'typed array (length throws)'; }
  const name = (a.constructor as { name?: string }).name?.replace('Array', '') ?? '?';
  const head: string[] = [];
  for (let i = 0; i < Math.min(n, 6); i++) head.push(String(t[i]));
  return `${name}(${n})[${head.join(',')}${n > 6 ? ',…' : ''}]`;
}

/**
 * An Int32Array-shaped option of n elements (valid contents `vals`) that is wrong: short, long,
 * another element type, detached, out of bounds, an Array, a Proxy, or a scalar.
 */
export function badI32(g: Gen, vals: ArrayLike<number>): V {
  const n = vals.length;
  switch (g.int(12)) {
    case 0: return { v: new Int32Array(Math.max(0, n - 1)), d: `i32(${Math.max(0, n - 1)} short)` };
    case 1: return { v: new Int32Array(n + 1), d: `i32(${n + 1} long)` };
    case 2: return { v: Uint32Array.from(vals, (x) => x >>> 0), d: `u32(${n})` };
    case 3: return { v: Float32Array.from(vals), d: `f32(${n})` };
    case 4: return { v: new BigInt64Array(n), d: `BigInt64Array(${n})` };
    case 5: { const a = Int32Array.from(vals); detach(a.buffer); return { v: a, d: `i32(detached, was ${n})` }; }
    case 6: {
      const rab = newRab(4 * n + 16, 4 * n + 64);
      const a = new Int32Array(rab, 16, n);
      rab.resize(8);
      return { v: a, d: `i32(${n} rab out of bounds)` };
    }
    case 7: return { v: Array.from(vals), d: `Array(${n})` };
    case 8: return { v: new Proxy(Int32Array.from(vals), {}), d: `Proxy(i32(${n}))` };
    case 9: return { v: new DataView(new ArrayBuffer(4 * n)), d: 'DataView' };
    case 10: return { v: Int16Array.from(vals), d: `i16(${n})` };
    default: return scalar(g);
  }
}

/** A huge or odd string for a name argument (kvDtype, setKernelPath). */
export function badString(g: Gen): V {
  switch (g.int(7)) {
    case 0: return { v: 'x'.repeat(1 << 24), d: "'x'*2^24" };
    case 1: return { v: 'é'.repeat(300), d: "'é'*300" };
    case 2: return { v: '\u{1F600}'.repeat(100), d: "'😀'*100" };
    case 3: return { v: 'f16\0', d: "'f16\\0'" };
    case 4: return { v: '\ud800', d: 'lone surrogate' };
    case 5: return { v: 'a'.repeat(199) + 'é', d: "'a'*199+'é'" };
    default: return { v: new String('f32'), d: "new String('f32')" };
  }
}
