import type { ExecutionContext } from 'ava';

export interface Tolerance { atol: number; rtol: number }

/**
 * Passes when |a - e| <= atol + rtol·|e| everywhere (and -inf matches -inf). On failure the
 * message gives the worst violation, its flat index and its multi-index in `shape`.
 */
export function assertClose(t: ExecutionContext, actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance, label: string, shape?: readonly number[]): void {
  if (actual.length !== expected.length) {
    t.fail(`${label}: length ${actual.length} != expected ${expected.length}`);
    return;
  }
  let worst = -1, worstExcess = 0, maxDiff = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    if (a === e) continue; // covers matching infinities
    const diff = Math.abs(a - e);
    if (!(diff <= maxDiff)) maxDiff = Number.isNaN(diff) ? NaN : Math.max(maxDiff, diff);
    const excess = Number.isNaN(diff) ? Infinity : diff - (tol.atol + tol.rtol * Math.abs(e));
    if (excess > worstExcess) {
      worstExcess = excess;
      worst = i;
    }
  }
  if (worst < 0) {
    t.pass();
    return;
  }
  t.fail(`${label}: |actual - expected| exceeds atol ${tol.atol} + rtol ${tol.rtol}·|expected| at index ${worst}${shape ? ` ${JSON.stringify(unravel(worst, shape))}` : ''}: actual ${actual[worst]}, expected ${expected[worst]} (largest difference ${maxDiff})`);
}

export function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = i % shape[d];
    i = Math.floor(i / shape[d]);
  }
  return idx;
}

export interface BoundReport {
  ok: boolean;
  /** Elements with |actual - expected| > bound (NaN counts; matching infinities do not). */
  violations: number;
  /** The element exceeding its bound by the largest factor, or -1. */
  worst: number;
  /** Largest |actual - expected| and where. */
  maxDiff: number;
  maxDiffAt: number;
  message: string;
}

/**
 * Compares element-wise against a per-element absolute bound: passes when
 * |actual[i] - expected[i]| <= bound[i] for every i (equal values, including equal infinities,
 * always pass; a bound of 0 demands exact equality). The message names the worst element
 * (largest difference/bound ratio) and the largest difference, each with its multi-index in `shape`.
 */
export function checkWithin(actual: ArrayLike<number>, expected: ArrayLike<number>, bound: ArrayLike<number>, label: string, shape?: readonly number[]): BoundReport {
  if (actual.length !== expected.length || bound.length !== expected.length) {
    return { ok: false, violations: -1, worst: -1, maxDiff: NaN, maxDiffAt: -1, message: `${label}: length ${actual.length} != expected ${expected.length} (bound ${bound.length})` };
  }
  let violations = 0, worst = -1, worstRatio = 1, maxDiff = 0, maxDiffAt = -1;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    if (a === e) continue;
    const diff = Math.abs(a - e);
    if (!(diff <= maxDiff)) {
      maxDiff = diff;
      maxDiffAt = i;
    }
    if (diff <= bound[i]) continue; // false for NaN
    violations++;
    const ratio = Number.isNaN(diff) ? Infinity : diff / bound[i];
    if (worst < 0 || ratio > worstRatio) {
      worst = i;
      worstRatio = ratio;
    }
  }
  const at = (i: number) => `index ${i}${shape ? ` ${JSON.stringify(unravel(i, shape))}` : ''}`;
  const largest = maxDiffAt < 0 ? 'all equal' : `largest difference ${maxDiff} at ${at(maxDiffAt)} (bound there ${bound[maxDiffAt]})`;
  const message = violations === 0
    ? `${label}: within bound; ${largest}`
    : `${label}: ${violations} of ${actual.length} elements exceed their bound; worst at ${at(worst)}: actual ${actual[worst]}, expected ${expected[worst]}, ` +
      `difference ${Math.abs(actual[worst] - expected[worst])} = ${worstRatio.toPrecision(3)} x bound ${bound[worst]}; ${largest}`;
  return { ok: violations === 0, violations, worst, maxDiff, maxDiffAt, message };
}

/** assertClose with a per-element bound (see checkWithin). */
export function assertWithin(t: ExecutionContext, actual: ArrayLike<number>, expected: ArrayLike<number>, bound: ArrayLike<number>, label: string, shape?: readonly number[]): boolean {
  const r = checkWithin(actual, expected, bound, label, shape);
  if (r.ok) t.pass();
  else t.fail(r.message);
  return r.ok;
}

/** bound_a + bound_b element-wise (the bound of a difference of two results each within its own bound). */
export function sumBounds(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] + b[i];
  return out;
}
