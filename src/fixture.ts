// A fixture case: named arrays in file order plus the manifest metadata that describes them.
import { encodeNpz } from './io/npz.ts';
import type { NpyArray } from './io/npy.ts';
import type { CaseConfig, ManifestEntry, Tolerance } from './manifest.ts';
import { sha256, upsertEntry, writeFixtureFile } from './manifest.ts';
import type { Tensor } from './tensor.ts';

export type Arrays = Map<string, NpyArray>;

export interface FixtureCase {
  name: string;
  description: string;
  seed: number;
  config: CaseConfig;
  tolerance: Tolerance;
  arrays: Arrays;
}

export const GENERATOR = 'kvstream 0.1.0';

export function f32(t: Tensor): NpyArray {
  return { dtype: '<f4', shape: [...t.shape], data: t.data };
}

/** The npz bytes of a case and its manifest entry (sha256 of exactly those bytes). */
export function encodeCase(c: FixtureCase): { bytes: Uint8Array; entry: ManifestEntry } {
  const bytes = encodeNpz(c.arrays);
  const arrays: ManifestEntry['arrays'] = {};
  for (const [name, a] of c.arrays) arrays[name] = { shape: [...a.shape], dtype: a.dtype };
  const entry: ManifestEntry = {
    name: c.name,
    file: `${c.name}.npz`,
    description: c.description,
    seed: c.seed,
    config: c.config,
    arrays,
    tolerance: c.tolerance,
    sha256: sha256(bytes),
    generator: GENERATOR,
  };
  return { bytes, entry };
}

/** Writes `<dir>/<name>.npz`, then replaces the case's manifest entry. */
export async function writeCase(dir: string, c: FixtureCase): Promise<ManifestEntry> {
  const { bytes, entry } = encodeCase(c);
  await writeFixtureFile(dir, c.name, bytes);
  await upsertEntry(dir, entry);
  return entry;
}
