// fixtures/manifest.json (DESIGN.md): cases sorted by name, one entry per name. Updates are a
// read-modify-write under an inter-process lock (proper-lockfile) finished by an atomic rename
// (write-file-atomic): concurrent writers lose no entry, and a killed run leaves the old file whole.
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { basename, join, resolve, sep } from 'node:path';
import lockfile from 'proper-lockfile';
import writeFileAtomic from 'write-file-atomic';
import { FixtureError } from './errors.ts';
import { decodeNpz } from './io/npz.ts';
import type { Dtype, NpyArray } from './io/npy.ts';

export const MANIFEST = 'manifest.json';
export const FORMAT = 'kvstream-fixtures';
export const VERSION = 1;

export interface CaseConfig {
  batch: number; d_model: number; d_kv_in: number; d_out: number;
  num_heads: number; num_kv_heads: number; d_k: number; d_v: number;
  t_q: number; t_kv: number; t_past: number;
  causal: boolean; q_offset: number; scale: number; dropout_p: number; bias: boolean;
  chunk_sizes: number[] | null;
}

export interface Tolerance { atol: number; rtol: number; reason: string }

export interface ManifestEntry {
  name: string;
  file: string;
  description: string;
  seed: number;
  config: CaseConfig;
  arrays: Record<string, { shape: number[]; dtype: Dtype }>;
  tolerance: Tolerance;
  sha256: string;
  generator: string;
}

export interface Manifest {
  format: typeof FORMAT;
  version: typeof VERSION;
  cases: ManifestEntry[];
}

const NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;

/** Case names are lower-case [a-z0-9_-], at most 64 characters: safe as file names anywhere. */
export function checkCaseName(name: string, source = 'case name'): string {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new FixtureError(`${source}: expected a case name of [a-z0-9_-] (at most 64, starting with a letter or digit), got ${JSON.stringify(name)}`);
  }
  return name;
}

/** The path of a manifest entry's file; it must be a plain "<name>.npz" inside `dir`. */
export function fixturePath(dir: string, entry: Pick<ManifestEntry, 'name' | 'file'>): string {
  checkCaseName(entry.name, `${join(dir, MANIFEST)}`);
  const file = entry.file;
  if (typeof file !== 'string' || file !== `${entry.name}.npz` || basename(file) !== file) {
    throw new FixtureError(`${join(dir, MANIFEST)}: case ${entry.name} names file ${JSON.stringify(file)}, expected "${entry.name}.npz" inside the fixture folder`);
  }
  const root = resolve(dir);
  const path = resolve(root, file);
  if (!path.startsWith(root + sep)) throw new FixtureError(`${join(dir, MANIFEST)}: file ${JSON.stringify(file)} resolves outside ${root}`);
  return path;
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The manifest in `dir`, or an empty one when there is none yet. */
export async function readManifest(dir: string): Promise<Manifest> {
  const path = join(dir, MANIFEST);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { format: FORMAT, version: VERSION, cases: [] };
    throw new FixtureError(`${path}: cannot read (${(e as Error).message})`, { cause: e });
  }
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch (e) {
    throw new FixtureError(`${path}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  if (m?.format !== FORMAT || m.version !== VERSION || !Array.isArray(m.cases)) {
    throw new FixtureError(`${path}: expected {"format": "${FORMAT}", "version": ${VERSION}, "cases": [...]}, got format ${JSON.stringify(m?.format)} version ${JSON.stringify(m?.version)}`);
  }
  for (const entry of m.cases) fixturePath(dir, entry);
  return m;
}

/** Adds `entry` to the manifest in `dir`, replacing any entry of the same name; cases stay sorted. */
export async function upsertEntry(dir: string, entry: ManifestEntry): Promise<void> {
  fixturePath(dir, entry);
  await mkdir(dir, { recursive: true });
  const path = join(dir, MANIFEST);
  const release = await lockfile.lock(path, {
    realpath: false,
    stale: 3_000, // a writer killed while holding the lock blocks others for at most this long
    retries: { retries: 200, factor: 1.2, minTimeout: 10, maxTimeout: 200 },
  });
  try {
    const m = await readManifest(dir);
    m.cases = m.cases.filter((c) => c.name !== entry.name);
    m.cases.push(entry);
    m.cases.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    await writeFileAtomic(path, formatJson(m));
  } finally {
    await release();
  }
}

/** Two-space JSON with arrays of numbers (shapes, chunk sizes) kept on one line. */
export function formatJson(value: unknown): string {
  return `${JSON.stringify(value, null, 2).replace(/\[\s+([-\d.e,\s]*?)\s+\]/g, (_, inner: string) => `[${inner.split(/,\s*/).join(', ')}]`)}\n`;
}

/** Writes `<dir>/<name>.npz` atomically; returns its sha256. */
export async function writeFixtureFile(dir: string, name: string, bytes: Uint8Array): Promise<string> {
  const path = fixturePath(dir, { name, file: `${name}.npz` });
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(path, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  return sha256(bytes);
}

/** How the decoded arrays of a fixture disagree with its manifest entry (empty when they agree). */
export function arrayProblems(entry: ManifestEntry, arrays: ReadonlyMap<string, NpyArray>): string[] {
  const problems: string[] = [];
  for (const [key, meta] of Object.entries(entry.arrays)) {
    const a = arrays.get(key);
    if (!a) problems.push(`array ${key} listed in the manifest is missing`);
    else if (a.dtype !== meta.dtype || a.shape.join(',') !== meta.shape.join(',')) {
      problems.push(`array ${key} is ${a.dtype} [${a.shape.join(',')}], the manifest says ${meta.dtype} [${meta.shape.join(',')}]`);
    }
  }
  return problems;
}

/**
 * The arrays of case `name` in `dir`, checked against its manifest entry: the file's sha256,
 * and every listed array present with the listed shape and dtype.
 */
export async function loadFixture(dir: string, name: string): Promise<{ entry: ManifestEntry; arrays: Map<string, NpyArray> }> {
  checkCaseName(name);
  const m = await readManifest(dir);
  const entry = m.cases.find((c) => c.name === name);
  if (!entry) throw new FixtureError(`${join(dir, MANIFEST)}: no case named ${name} (have: ${m.cases.map((c) => c.name).join(', ') || 'none'})`);
  const path = fixturePath(dir, entry);
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new FixtureError(`${path}: cannot read (${(e as Error).message})`, { cause: e });
  }
  const digest = sha256(bytes);
  if (digest !== entry.sha256) throw new FixtureError(`${path}: sha256 ${digest} does not match the manifest's ${entry.sha256}`);
  const arrays = decodeNpz(bytes, path);
  const [problem] = arrayProblems(entry, arrays);
  if (problem) throw new FixtureError(`${path}: ${problem}`);
  return { entry, arrays };
}
