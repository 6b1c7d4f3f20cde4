// NPZ = a zip of NPY files named "<array>.npy". Written byte-reproducibly: entries in the given
// order, deflate level 6, and one fixed timestamp (1980-01-01 00:00, the zip epoch).
// Read from the central directory (as numpy's zipfile does), every entry checked before it is
// inflated: plain unique names, stored or deflated, no overlapping data, sizes within the limits;
// a deflated entry's NPY header is inflated first and its dtype × shape must give the size the
// zip declares, and inflating stops at that size, so a zip bomb costs at most what an honest
// file of that shape would; then its length and CRC-32 are checked.
import { readFile } from 'node:fs/promises';
import * as zlib from 'node:zlib';
import { Inflate, zipSync } from 'fflate';
import type { Zippable } from 'fflate';
import { FixtureError } from '../errors.ts';
import { decodeNpy, encodeNpy, MAX_HEADER_BYTES, MAX_NPY_BYTES, parseNpyHeader, pyTuple } from './npy.ts';
import type { AnyNpyArray, AnyNpyData, DecodeOptions, Dtype, Int64Dtype, NpyArray } from './npy.ts';

// fflate writes DOS times from the Date's *local* fields; a Date built from local fields gives
// the same bytes in every time zone.
const ZIP_EPOCH = new Date(1980, 0, 1, 0, 0, 0);

type Writable = { data: AnyNpyData; shape: readonly number[]; dtype?: Dtype | Int64Dtype };

/** Zip bytes holding each array as "<name>.npy", in the order of `arrays`. */
export function encodeNpz(arrays: ReadonlyMap<string, Writable> | Record<string, Writable>): Uint8Array {
  const entries = arrays instanceof Map ? [...arrays] : Object.entries(arrays);
  const files: Zippable = {};
  for (const [name, array] of entries) files[`${name}.npy`] = [encodeNpy(array), { level: 6, mtime: ZIP_EPOCH }];
  return zipSync(files);
}

export interface NpzOptions extends DecodeOptions {
  /** Largest inflated entry, in bytes (default: MAX_NPY_BYTES of data plus the largest header). */
  maxEntryBytes?: number;
  /** Largest sum of inflated entries, in bytes (default 2^32). */
  maxTotalBytes?: number;
}

interface Entry {
  name: string;
  method: number;
  crc: number;
  compressed: number;
  size: number;
  /** Offset of the local header. */
  local: number;
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

/** zlib's CRC-32 (Node >= 20.15), else a table-driven one. */
function crc32(bytes: Uint8Array): number {
  const native = (zlib as { crc32?: (data: Uint8Array) => number }).crc32;
  if (native) return native(bytes);
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** The central directory's entries. Throws FixtureError (`fail`) for anything unreadable. */
function centralDirectory(bytes: Uint8Array, fail: (problem: string) => never): { entries: Entry[]; cdOffset: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u16 = (o: number) => view.getUint16(o, true);
  const u32 = (o: number) => view.getUint32(o, true);
  const u64 = (o: number) => {
    const v = view.getBigUint64(o, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`a zip64 field of ${v} is out of range`);
    return Number(v);
  };
  const need = (o: number, n: number, what: string) => {
    if (o < 0 || o + n > bytes.length) fail(`truncated: ${what} at byte ${o} runs past the end (${bytes.length} bytes)`);
  };
  // End of central directory record: the last one, within 64 KiB of comment from the end.
  let e = bytes.length - 22;
  while (e >= 0 && e >= bytes.length - 22 - 65535 && u32(e) !== 0x06054b50) e--;
  if (e < 0 || e < bytes.length - 22 - 65535) fail('no end of central directory record (truncated, or not a zip)');
  if (u16(e + 4) !== 0 || u16(e + 6) !== 0) fail('multi-disk archives are not supported');
  let count = u16(e + 10), cdSize = u32(e + 12), cdOffset = u32(e + 16);
  let cdEnd = e;
  if (e >= 20 && u32(e - 20) === 0x07064b50) {
    const z = u64(e - 12);
    need(z, 56, 'zip64 end of central directory');
    if (u32(z) !== 0x06064b50) fail('bad zip64 end of central directory record');
    count = u64(z + 32);
    cdSize = u64(z + 40);
    cdOffset = u64(z + 48);
    cdEnd = z;
  }
  if (cdOffset + cdSize > cdEnd) fail(`central directory (${cdSize} bytes at ${cdOffset}) overlaps its end record (truncated?)`);
  if (count * 46 > cdSize) fail(`central directory of ${cdSize} bytes cannot hold ${count} entries`);
  const entries: Entry[] = [];
  for (let i = 0, p = cdOffset; i < count; i++) {
    need(p, 46, 'central directory entry');
    if (u32(p) !== 0x02014b50) fail(`bad central directory entry ${i} at byte ${p}`);
    const flags = u16(p + 8), method = u16(p + 10);
    let compressed = u32(p + 20), size = u32(p + 24), local = u32(p + 42);
    const nameLen = u16(p + 28), extraLen = u16(p + 30), commentLen = u16(p + 32);
    need(p + 46, nameLen + extraLen + commentLen, 'central directory entry');
    const rawName = bytes.subarray(p + 46, p + 46 + nameLen);
    let name = '';
    if (flags & 0x800) {
      try {
        name = new TextDecoder('utf-8', { fatal: true }).decode(rawName);
      } catch {
        fail(`entry ${i}: name is flagged UTF-8 but is not`);
      }
    } else {
      if (rawName.some((b) => b > 0x7f)) fail(`entry ${i}: name is not ASCII and not flagged UTF-8`);
      name = String.fromCharCode(...rawName);
    }
    // Zip64 extra field: the 64-bit values of the fields saturated at 0xffffffff, in this order.
    for (let x = p + 46 + nameLen, end = x + extraLen; x + 4 <= end; x += 4 + u16(x + 2)) {
      if (u16(x) !== 1) continue;
      let f = x + 4;
      if (size === 0xffffffff) (size = u64(f)), (f += 8);
      if (compressed === 0xffffffff) (compressed = u64(f)), (f += 8);
      if (local === 0xffffffff) local = u64(f);
    }
    if (flags & 1) fail(`entry ${name}: encrypted entries are not supported`);
    entries.push({ name, method, crc: u32(p + 16), compressed, size, local });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return { entries, cdOffset };
}

/** Where entry `en`'s data starts, after its local header (whose name must match). */
function dataStart(bytes: Uint8Array, en: Entry, cdOffset: number, fail: (problem: string) => never): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (en.local + 30 > bytes.length || view.getUint32(en.local, true) !== 0x04034b50) fail(`entry ${en.name}: no local header at byte ${en.local}`);
  const nameLen = view.getUint16(en.local + 26, true), extraLen = view.getUint16(en.local + 28, true);
  const start = en.local + 30 + nameLen + extraLen;
  let local = '';
  for (let i = en.local + 30; i < en.local + 30 + nameLen && i < bytes.length; i++) local += String.fromCharCode(bytes[i]);
  const central = String.fromCharCode(...new TextEncoder().encode(en.name));
  if (local !== central) fail(`entry ${en.name}: its local header names ${JSON.stringify(local)}`);
  if (start + en.compressed > cdOffset) fail(`entry ${en.name}: ${en.compressed} bytes of data at ${start} run into the central directory (truncated?)`);
  return start;
}

/**
 * Inflates a deflated entry. First its NPY header alone, in small steps (fflate's streaming
 * Inflate, stopped early): dtype × shape must give the size the zip declares. Then all of it
 * with zlib, which stops at that size. A bomb thus costs at most what an honest file of its
 * declared shape would. Returns exactly `en.size` bytes.
 */
function inflateEntry(data: Uint8Array, en: Entry, where: string, fail: (problem: string) => never): Uint8Array {
  const chunks: Uint8Array[] = [];
  let total = 0, all = false;
  const head = new Inflate((chunk) => {
    total += chunk.length;
    chunks.push(chunk);
  });
  const want = Math.min(en.size, MAX_HEADER_BYTES);
  const STEP = 4096; // a step inflates to at most ~4 MiB (deflate's ratio is under 1032:1)
  try {
    for (let o = 0; total < want; o += STEP) {
      all = o + STEP >= data.length;
      head.push(data.subarray(o, o + STEP), all);
      if (all) break;
    }
  } catch (e) {
    fail(`entry ${en.name}: corrupt deflate data (${(e as Error).message})`);
  }
  const tooBig = () => fail(`entry ${en.name}: inflates past the ${en.size} bytes the zip declares (zip bomb?)`);
  const short = (n: number) => fail(`entry ${en.name}: inflates to ${n} bytes, the zip declares ${en.size} (truncated?)`);
  if (total > en.size) tooBig();
  if (total < want) short(total);
  const first = concat(chunks, total);
  const h = parseNpyHeader(first, where);
  const declared = h.dataOffset + h.dataBytes;
  if (declared !== en.size) fail(`entry ${en.name}: the zip declares ${en.size} bytes, its NPY header (${h.dtype}, shape ${pyTuple(h.shape)}) makes ${declared}`);
  if (all && total === en.size) return first;
  let out: Uint8Array;
  try {
    out = zlib.inflateRawSync(data, { maxOutputLength: en.size });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') tooBig();
    return fail(`entry ${en.name}: corrupt deflate data (${(e as Error).message})`);
  }
  if (out.length !== en.size) short(out.length);
  return out;
}

function concat(chunks: Uint8Array[], total: number): Uint8Array {
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    out.set(c.subarray(0, total - o), o);
    o += c.length;
    if (o >= total) break;
  }
  return out;
}

/**
 * Decodes npz bytes; `source` names the file in errors. Every entry must be a "<name>.npy" with a
 * plain, unique name (no '/', '\\', leading '.' or control characters); see the header comment for the
 * size checks. Entries come out in central-directory order (numpy's order).
 */
export function decodeNpz(bytes: Uint8Array, source: string, options?: NpzOptions & { int64?: undefined }): Map<string, NpyArray>;
export function decodeNpz(bytes: Uint8Array, source: string, options: NpzOptions): Map<string, AnyNpyArray>;
export function decodeNpz(bytes: Uint8Array, source: string, options: NpzOptions = {}): Map<string, AnyNpyArray> {
  const fail = (problem: string): never => {
    throw new FixtureError(`${source}: ${problem}`);
  };
  const maxEntry = options.maxEntryBytes ?? MAX_NPY_BYTES + MAX_HEADER_BYTES;
  const maxTotal = options.maxTotalBytes ?? 2 ** 32;
  const { entries, cdOffset } = centralDirectory(bytes, (problem) => fail(`not a readable zip archive: ${problem}`));
  const seen = new Set<string>();
  let total = 0;
  const spans: [number, number, string][] = [];
  for (const en of entries) {
    if (/[/\\\x00-\x1f\x7f]/.test(en.name) || en.name.startsWith('.')) fail(`entry ${JSON.stringify(en.name)}: member names must be plain file names (no '/', '\\', leading '.' or control characters)`);
    if (!en.name.endsWith('.npy')) fail(`entry ${en.name} is not a .npy file`);
    if (seen.has(en.name)) fail(`entry ${en.name} appears more than once`);
    seen.add(en.name);
    if (en.method !== 0 && en.method !== 8) fail(`entry ${en.name}: compression method ${en.method} is not supported (stored or deflated only)`);
    if (en.size > maxEntry) fail(`entry ${en.name} inflates to ${en.size} bytes, over the ${maxEntry}-byte limit`);
    total += en.size;
    if (total > maxTotal) fail(`entries inflate to more than the ${maxTotal}-byte limit in all`);
    if (en.method === 0 && en.compressed !== en.size) fail(`entry ${en.name} is stored with ${en.compressed} bytes but declares ${en.size}`);
    spans.push([en.local, dataStart(bytes, en, cdOffset, fail) + en.compressed, en.name]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let k = 1; k < spans.length; k++) if (spans[k][0] < spans[k - 1][1]) fail(`entries ${spans[k - 1][2]} and ${spans[k][2]} overlap (zip bomb?)`);

  const out = new Map<string, AnyNpyArray>();
  for (const en of entries) {
    const where = `${source}:${en.name}`;
    const start = dataStart(bytes, en, cdOffset, fail);
    const raw = bytes.subarray(start, start + en.compressed);
    const data = en.method === 0 ? raw : inflateEntry(raw, en, where, fail);
    if (crc32(data) !== en.crc) fail(`entry ${en.name}: CRC-32 mismatch (corrupt data)`);
    out.set(en.name.slice(0, -4), decodeNpy(data, where, options));
  }
  return out;
}

export async function readNpz(path: string, options?: NpzOptions & { int64?: undefined }): Promise<Map<string, NpyArray>>;
export async function readNpz(path: string, options: NpzOptions): Promise<Map<string, AnyNpyArray>>;
export async function readNpz(path: string, options: NpzOptions = {}): Promise<Map<string, AnyNpyArray>> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new FixtureError(`${path}: cannot read (${(e as Error).message})`, { cause: e });
  }
  return decodeNpz(bytes, path, options);
}
