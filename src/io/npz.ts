// NPZ = a zip of NPY files named "<array>.npy". Written byte-reproducibly: entries in the given
// order, deflate level 6, and one fixed timestamp (1980-01-01 00:00, the zip epoch).
import { readFile } from 'node:fs/promises';
import { unzipSync, zipSync } from 'fflate';
import type { Zippable } from 'fflate';
import { FixtureError } from '../errors.ts';
import { decodeNpy, encodeNpy, MAX_NPY_BYTES } from './npy.ts';
import type { NpyArray } from './npy.ts';

// fflate writes DOS times from the Date's *local* fields; a Date built from local fields gives
// the same bytes in every time zone.
const ZIP_EPOCH = new Date(1980, 0, 1, 0, 0, 0);

/** Zip bytes holding each array as "<name>.npy", in the order of `arrays`. */
export function encodeNpz(arrays: ReadonlyMap<string, NpyArray> | Record<string, NpyArray>): Uint8Array {
  const entries = arrays instanceof Map ? [...arrays] : Object.entries(arrays);
  const files: Zippable = {};
  for (const [name, array] of entries) files[`${name}.npy`] = [encodeNpy(array), { level: 6, mtime: ZIP_EPOCH }];
  return zipSync(files);
}

/** Decodes zip bytes; `source` names the file in errors. Sizes are checked before inflating. */
export function decodeNpz(bytes: Uint8Array, source: string): Map<string, NpyArray> {
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(bytes, {
      filter: (f) => {
        if (f.originalSize > MAX_NPY_BYTES + 65536) throw new FixtureError(`${source}: entry ${f.name} inflates to ${f.originalSize} bytes, over the limit`);
        return true;
      },
    });
  } catch (e) {
    if (e instanceof FixtureError) throw e;
    throw new FixtureError(`${source}: not a readable zip archive (${(e as Error).message})`, { cause: e });
  }
  const out = new Map<string, NpyArray>();
  for (const [file, data] of Object.entries(files)) {
    if (!file.endsWith('.npy')) throw new FixtureError(`${source}: entry ${file} is not a .npy file`);
    out.set(file.slice(0, -4), decodeNpy(data, `${source}:${file}`));
  }
  return out;
}

export async function readNpz(path: string): Promise<Map<string, NpyArray>> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new FixtureError(`${path}: cannot read (${(e as Error).message})`, { cause: e });
  }
  return decodeNpz(bytes, path);
}
