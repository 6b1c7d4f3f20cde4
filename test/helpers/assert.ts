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
