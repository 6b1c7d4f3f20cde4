// Named pipelines: a spec draws a case's inputs from its seed and builds the case's stream from
// the operators. Generation runs it on fresh inputs; verification runs it again on the inputs
// stored in a fixture and compares the outputs within the stored tolerance.
import { readFile } from 'node:fs/promises';
import { defaultIfEmpty, lastValueFrom, map, reduce } from 'rxjs';
import type { Observable } from 'rxjs';
import type { Arrays, FixtureCase } from './fixture.ts';
import { decodeNpz } from './io/npz.ts';
import type { CaseConfig, ManifestEntry, Tolerance } from './manifest.ts';
import { arrayProblems, fixturePath, sha256 } from './manifest.ts';
import { chunkSizes } from './operators/chunks.ts';

export interface PipelineSpec {
  name: string;
  description: string;
  /** Default seed: weights come from Rng(seed, 0), inputs from Rng(seed, 1), dropout keys from seed. */
  seed: number;
  config: CaseConfig;
  /** Whether `--chunk N` may re-split the case's chunk_sizes. */
  chunkable?: boolean;
  /** Names of the arrays that are inputs (stored and fed back by `verify`), in file order. */
  inputNames: readonly string[];
  /** Draws the inputs from the seed. */
  inputs(seed: number, config: CaseConfig): Arrays;
  /** The case's computation from its inputs: a stream of output arrays, merged in order. */
  run(inputs: Arrays, config: CaseConfig, seed: number): Observable<Arrays>;
}

/** fp32 kernels vs float64 and vs other BLAS builds: see docs/fixtures.md. */
export const DEFAULT_TOLERANCE: Tolerance = {
  atol: 1e-5,
  rtol: 1e-4,
  reason: 'fp32 kernels; outputs are convex combinations of O(1) values, so summation-order and exp rounding stay below 1e-5 absolute / 1e-4 relative (measured against a float64 reference)',
};

export interface RunOverrides {
  seed?: number;
  /** Re-splits a chunked case (one with chunk_sizes) into chunks of this many tokens. */
  chunk?: number;
}

/** The case of `spec` with its overrides applied, as a stream of one FixtureCase. */
export function buildCase(spec: PipelineSpec, overrides: RunOverrides = {}): Observable<FixtureCase> {
  const seed = overrides.seed ?? spec.seed;
  const config = { ...spec.config };
  if (overrides.chunk !== undefined && spec.chunkable && config.chunk_sizes) config.chunk_sizes = chunkSizes(config.t_kv, overrides.chunk);
  const inputs = spec.inputs(seed, config);
  return spec.run(inputs, config, seed).pipe(
    reduce((all, outputs) => new Map([...all, ...outputs]), new Map(inputs)),
    map((arrays) => ({ name: spec.name, description: spec.description, seed, config, tolerance: DEFAULT_TOLERANCE, arrays })),
  );
}

export interface VerifyReport {
  name: string;
  problems: string[];
}

/** Re-runs one manifest case from its stored inputs; problems is empty when it passes. */
export async function verifyCase(dir: string, entry: ManifestEntry, spec: PipelineSpec | undefined): Promise<VerifyReport> {
  const problems: string[] = [];
  const path = fixturePath(dir, entry);
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    return { name: entry.name, problems: [`cannot read ${path}: ${(e as Error).message}`] };
  }
  const digest = sha256(bytes);
  if (digest !== entry.sha256) problems.push(`sha256 ${digest} != manifest ${entry.sha256}`);
  let stored: Arrays;
  try {
    stored = decodeNpz(bytes, path);
  } catch (e) {
    return { name: entry.name, problems: [...problems, (e as Error).message] };
  }
  problems.push(...arrayProblems(entry, stored));
  if (!spec) return { name: entry.name, problems: [...problems, `no pipeline named ${entry.name} to re-run it`] };
  if (problems.length) return { name: entry.name, problems };

  const inputs: Arrays = new Map();
  for (const key of spec.inputNames) if (stored.has(key)) inputs.set(key, stored.get(key)!);
  let outputs: Arrays;
  try {
    outputs = await lastValueFrom(spec.run(inputs, entry.config, entry.seed).pipe(reduce((all, o) => new Map([...all, ...o]), new Map() as Arrays), defaultIfEmpty(new Map() as Arrays)));
  } catch (e) {
    return { name: entry.name, problems: [`re-run failed: ${(e as Error).message}`] };
  }
  const { atol, rtol } = entry.tolerance;
  for (const [key, got] of outputs) {
    const want = stored.get(key);
    if (!want) {
      problems.push(`re-run produced ${key}, which the fixture lacks`);
      continue;
    }
    if (got.shape.join(',') !== want.shape.join(',')) {
      problems.push(`${key}: shape [${got.shape}] != stored [${want.shape}]`);
      continue;
    }
    const exact = got.dtype !== '<f4';
    let worst = -1, worstExcess = 0;
    for (let i = 0; i < got.data.length; i++) {
      const a = got.data[i], e = want.data[i];
      if (a === e) continue;
      const excess = exact ? 1 : Math.abs(a - e) - (atol + rtol * Math.abs(e));
      if (Number.isNaN(excess) || excess > worstExcess) {
        worstExcess = Number.isNaN(excess) ? Infinity : excess;
        worst = i;
      }
    }
    if (worst >= 0) problems.push(`${key}: at flat index ${worst} got ${got.data[worst]}, stored ${want.data[worst]} (beyond atol ${atol} + rtol ${rtol}·|stored|)`);
  }
  return { name: entry.name, problems };
}
