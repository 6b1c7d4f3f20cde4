// Hostile and broken .npy/.npz files: each refused with a FixtureError whose message names the
// file and what was wrong; nothing is evaluated and nothing large is allocated. numpy (with
// allow_pickle=False) is asked about every .npy case too: where it accepts a file we refuse,
// the table says so (we are stricter: duplicate keys, bool bytes, dtype spellings numpy never writes).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { deflateRawSync } from 'node:zlib';
import { join } from 'node:path';
import { deflateSync, zipSync } from 'fflate';
import { decodeNpy, encodeNpy } from '../../src/io/npy.ts';
import { decodeNpz } from '../../src/io/npz.ts';

const dir = mkdtempSync(join(tmpdir(), 'kvstream-hostile-'));

/** An NPY file of `version` with a hand-written header (padded to 64) followed by `data`. */
function npy(header: string, data: Uint8Array = new Uint8Array(0), version = 1, rawHeader?: Uint8Array): Uint8Array {
  const pre = version === 1 ? 10 : 12;
  const h = rawHeader ?? Buffer.from(header + ' '.repeat((64 - ((pre + header.length + 1) % 64)) % 64) + '\n', 'latin1');
  const out = new Uint8Array(pre + h.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0]);
  const view = new DataView(out.buffer);
  if (version === 1) view.setUint16(8, h.length, true);
  else view.setUint32(8, h.length, true);
  out.set(h, pre);
  out.set(data, pre + h.length);
  return out;
}
const dict = (descr: string, shape = '(2,)', fortran = 'False') => `{'descr': ${descr}, 'fortran_order': ${fortran}, 'shape': ${shape}, }`;
const f4x2 = new Uint8Array(8);

// [what, bytes, message (after "h.npy: "), numpy refuses it too]
const NPY: [string, Uint8Array, string | RegExp, boolean][] = [
  ['code in descr (__import__)', npy(dict("__import__('os').system('touch pwned')")), `malformed header at byte 10: unsupported value "__import__('os').system(" (only strings, True/False and integer tuples; the header is never evaluated)`, true],
  ['a call in shape', npy(dict("'<f4'", "(len('ab'),)"), f4x2), `malformed header at byte 51: unsupported value "len('ab'),), }          " (only strings, True/False and integer tuples; the header is never evaluated)`, true],
  ['an attribute call in a tuple', npy(dict("'<f4'", '(os.getpid(),)'), f4x2), /^malformed header at byte 51: unsupported value "os\.getpid\(\),\), }/, true],
  ['a lambda', npy(dict('(lambda: 1)()')), /^malformed header at byte 11: unsupported value "lambda: 1\)\(\)/, true],
  ['a bytes literal', npy(dict("b'<f4'"), f4x2), /^malformed header at byte 10: unsupported value "b'<f4'/, true],
  ['a nested dict', npy(dict("{'a': 1}")), /^malformed header at byte 10: unsupported value "\{'a': 1\}/, true],
  ['not a dict', npy("['<f4', False, (2,)]", f4x2), /^malformed header at byte 0: expected '\{', got "\["$/, true],
  ['trailing code after the dict', npy(`${dict("'<f4'")} + __import__('os')`, f4x2), 'malformed header: trailing characters after the dict', true],
  ['duplicate key', npy("{'descr': '<f4', 'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", f4x2), "duplicate header key 'descr'", false],
  ['extra key', npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'pickle': True, }", f4x2), "unexpected header key 'pickle' (numpy allows exactly 'descr', 'fortran_order', 'shape')", true],
  ['missing shape', npy("{'descr': '<f4', 'fortran_order': False, }", f4x2), "header lacks 'shape'", true],
  ['wrong magic', Uint8Array.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x5a, 1, 0, 0, 0, 0, 0]), 'bad magic: not an NPY file', true],
  ['a zip handed in as .npy', zipSync({ 'a.npy': new Uint8Array(4) }), 'bad magic: not an NPY file', false],
  ['version 4.0', (() => { const b = encodeNpy({ shape: [2], data: new Float32Array(2) }); b[6] = 4; return b; })(), 'unsupported NPY version 4.0 (expected 1.0, 2.0 or 3.0)', true],
  ['version 1.1', (() => { const b = encodeNpy({ shape: [2], data: new Float32Array(2) }); b[7] = 1; return b; })(), 'unsupported NPY version 1.1 (expected 1.0, 2.0 or 3.0)', true],
  ['header over 10000 characters', npy(dict("'<f4'") + ' '.repeat(10000), f4x2), /^header of 10\d\d\d bytes is longer than numpy's 10000-character limit \(max_header_size\)$/, true],
  ['version 2.0 header length 4 GiB', (() => { const b = npy(dict("'<f4'"), f4x2, 2); new DataView(b.buffer).setUint32(8, 0xffffffff, true); return b; })(), "header of 4294967295 bytes is longer than numpy's 10000-character limit (max_header_size)", true],
  ['version 3.0 header not UTF-8', npy('', f4x2, 3, Buffer.from("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), '\xff': 1}\n", 'latin1')), 'header of a version 3.0 file is not valid UTF-8', true],
  ['truncated preamble', npy(dict("'<f4'"), f4x2).subarray(0, 7), 'truncated: 7 bytes, shorter than an NPY preamble', true],
  ['truncated header', npy(dict("'<f4'"), f4x2).subarray(0, 40), 'truncated header: declares 118 bytes, 30 present', true],
  ['truncated data', npy(dict("'<f4'", '(4, 4)'), new Uint8Array(60)), 'shape (4, 4) of <f4 needs 64 data bytes, file has 60 (truncated)', true],
  ['more data than the shape', npy(dict("'<f4'", '(3,)'), new Uint8Array(16)), 'shape (3,) of <f4 needs 12 data bytes, file has 16', false],
  ['huge dims', npy(dict("'<f8'", '(4294967296, 4294967296)')), 'declared shape (4294967296, 4294967296) of <f8 needs 147573952589676412928 bytes, more than the 2147483648-byte limit', true],
  ['dim past 2^53', npy(dict("'<f4'", '(123456789012345678901234567890,)')), "header 'shape' entry 123456789012345678901234567890 is too large", true],
  ['negative dim', npy(dict("'<f4'", '(-2,)'), f4x2), "header 'shape' entry -2 is negative", true],
  ['negative dims cancelling out', npy(dict("'<f4'", '(-1, -2)'), f4x2), "header 'shape' entry -1 is negative", true],
  ['fractional dim', npy(dict("'<f4'", '(2.5,)'), f4x2), "header 'shape' entry 2.5 is not an integer", true],
  ['string dim', npy(dict("'<f4'", "('2',)"), f4x2), "header 'shape' entry '2' is not an integer", true],
  ['None dim', npy(dict("'<f4'", '(None,)'), f4x2), "header 'shape' entry None is not an integer", true],
  ['shape as a list', npy(dict("'<f4'", '[2]'), f4x2), "header 'shape' must be a tuple of integers, got [2]", true],
  ['shape as an int', npy(dict("'<f4'", '2'), f4x2), /^malformed header at byte 50: unsupported value "2, }/, true],
  ['fortran_order not a bool', npy(dict("'<f4'", '(2,)', '1'), f4x2), /malformed header at byte \d+: unsupported value "1, 'shape'/, true],
  ['object dtype', npy(dict("'|O'"), new Uint8Array(16)), 'dtype |O is refused: object arrays are pickles, and pickles are never loaded (accepted: f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1, byte order < > | =)', true],
  ['object dtype, bare O', npy(dict("'O'"), new Uint8Array(16)), /^dtype O is refused: object arrays are pickles/, true],
  ['structured dtype', npy(dict("[('a', '<f4'), ('b', '|O')]"), new Uint8Array(24)), 'structured/record dtypes are not supported (descr is a list of fields)', true],
  ['structured dtype without objects', npy(dict("[('a', '<f4'), ('b', '<i4')]"), new Uint8Array(16)), 'structured/record dtypes are not supported (descr is a list of fields)', false],
  ['subarray dtype', npy(dict("('<f4', (2,))"), new Uint8Array(32)), "header 'descr' must be a dtype string, got ('<f4', (2,))", true],
  ['void dtype', npy(dict("'|V8'"), new Uint8Array(16)), /^dtype \|V8 is refused: void\/record dtypes are not supported/, false],
  ['unicode dtype', npy(dict("'<U5'"), new Uint8Array(40)), /^dtype <U5 is refused: string dtypes are not supported/, false],
  ['complex dtype', npy(dict("'<c8'"), new Uint8Array(16)), /^dtype <c8 is refused: complex dtypes are not supported/, false],
  ['datetime dtype', npy(dict("'<M8[ns]'"), new Uint8Array(16)), /^dtype <M8\[ns\] is refused: datetime dtypes are not supported/, false],
  ['long double', npy(dict("'<f16'"), new Uint8Array(32)), /^dtype <f16 is refused: not a supported numeric dtype/, false],
  ['a dtype name numpy never writes', npy(dict("'float32'"), f4x2), /^dtype float32 is refused: not a supported numeric dtype/, false],
  ['bool byte other than 0/1', npy(dict("'|b1'", '(3,)'), Uint8Array.of(1, 0, 2)), '|b1 data must be 0 or 1, got 2 at [2]', false],
  ['string escape', npy(dict("'<f4\\x00'"), f4x2), 'malformed header at byte 10: escapes in strings are not supported', true],
];

test('numpy agrees on which hostile .npy files it refuses (allow_pickle=False)', (t) => {
  NPY.forEach(([, bytes], k) => writeFileSync(join(dir, `h${k}.npy`), bytes));
  const out = execFileSync('python3', ['-c', `
import numpy as np, json, warnings
warnings.simplefilter('ignore')
res = []
for k in range(${NPY.length}):
    try:
        np.load('h%d.npy' % k, allow_pickle=False); res.append(False)
    except Exception:
        res.append(True)
print(json.dumps(res))
`], { cwd: dir, encoding: 'utf8' });
  const refused = JSON.parse(out) as boolean[];
  NPY.forEach(([what, , , numpyRefuses], k) => t.is(refused[k], numpyRefuses, `${what}: numpy ${refused[k] ? 'refuses' : 'accepts'} it`));
});

for (const [what, bytes, message] of NPY) {
  test(`hostile .npy refused with a FixtureError: ${what}`, (t) => {
    const m = typeof message === 'string' ? `h.npy: ${message}` : new RegExp(`^h\\.npy: (?:${message.source.replace(/^\^/, '')})`);
    t.throws(() => decodeNpy(bytes, 'h.npy', { int64: 'bigint' }), { name: 'FixtureError', message: m });
  });
}

test('not hostile: big-endian data, Fortran order and 0-length dims with huge others are read', (t) => {
  const be = new Uint8Array(16);
  new DataView(be.buffer).setFloat64(0, 1.5, false);
  new DataView(be.buffer).setFloat64(8, -(2 ** -1074), false);
  t.deepEqual(decodeNpy(npy(dict("'>f8'"), be), 'be.npy'), { dtype: '>f8', shape: [2], data: Float64Array.of(1.5, -(2 ** -1074)) });
  t.deepEqual(decodeNpy(npy(dict("'<i2'", '(2, 2)', 'True'), Uint8Array.of(1, 0, 2, 0, 3, 0, 4, 0)), 'f.npy').data, Int16Array.of(1, 3, 2, 4));
  t.deepEqual(decodeNpy(npy(dict("'<f4'", '(0, 123456789012345)')), 'z.npy'), { dtype: '<f4', shape: [0, 123456789012345], data: new Float32Array(0) });
  t.deepEqual(decodeNpy(npy(dict("'=u2'"), Uint8Array.of(1, 0, 0, 1)), 'n.npy'), { dtype: '<u2', shape: [2], data: Uint16Array.of(1, 256) });
});

// ---------------------------------------------------------------------------------------------
// Zip archives, written by hand so that every field can lie.

interface Member {
  name: string | Uint8Array; data: Uint8Array; method?: number; crc?: number; size?: number; csize?: number;
  flags?: number; localName?: string;
  /** Only a central directory entry, pointing at `offset`. */
  centralOnly?: boolean; offset?: number;
}

function crc32(bytes: Uint8Array): number {
  let c = ~0;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  }
  return ~c >>> 0;
}

/** A zip of `members`: stored unless `method` 8 (then `data` must already be deflated and `size` given). */
function zip(members: Member[], crcOf: (m: Member) => number = (m) => m.crc ?? crc32(m.data)): Uint8Array {
  const parts: Uint8Array[] = [], central: Uint8Array[] = [];
  let offset = 0;
  for (const m of members) {
    const name = typeof m.name === 'string' ? Buffer.from(m.name) : m.name;
    const localName = m.localName === undefined ? name : Buffer.from(m.localName);
    const size = m.size ?? m.data.length;
    const local = Buffer.alloc(30 + localName.length);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(m.flags ?? 0, 6);
    local.writeUInt16LE(m.method ?? 0, 8);
    local.writeUInt32LE(crcOf(m), 14);
    local.writeUInt32LE(m.csize ?? m.data.length, 18);
    local.writeUInt32LE(size, 22);
    local.writeUInt16LE(localName.length, 26);
    local.set(localName, 30);
    const cd = Buffer.alloc(46 + name.length);
    cd.writeUInt32LE(0x02014b50, 0);
    cd.writeUInt16LE(20, 4);
    cd.writeUInt16LE(20, 6);
    cd.writeUInt16LE(m.flags ?? 0, 8);
    cd.writeUInt16LE(m.method ?? 0, 10);
    cd.writeUInt32LE(crcOf(m), 16);
    cd.writeUInt32LE(m.csize ?? m.data.length, 20);
    cd.writeUInt32LE(size, 24);
    cd.writeUInt16LE(name.length, 28);
    cd.writeUInt32LE(m.offset ?? offset, 42);
    cd.set(name, 46);
    central.push(cd);
    if (m.centralOnly) continue;
    parts.push(local, m.data);
    offset += local.length + m.data.length;
  }
  const cdSize = central.reduce((a, c) => a + c.length, 0);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(members.length, 8);
  end.writeUInt16LE(members.length, 10);
  end.writeUInt32LE(cdSize, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, ...central, end]);
}

const A = encodeNpy({ shape: [4], data: Float32Array.of(1, 2, 3, 4) }); // 144 bytes
const B = encodeNpy({ shape: [2], data: Int32Array.of(5, 6) });
/** 256 Ki floats of incompressible noise (xorshift32 bits). */
const noise = (() => {
  const w = new Uint32Array(1 << 18);
  let x = 1;
  for (let k = 0; k < w.length; k++) (x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), (w[k] = x >>> 0);
  const f = new Float32Array(w.buffer).map((v) => (Number.isFinite(v) ? v : 0));
  return encodeNpy({ shape: [f.length], data: f });
})();
const plainName = `member names must be plain file names (no '/', '\\', leading '.' or control characters)`;

const NPZ: [string, () => Uint8Array, string | RegExp][] = [
  ['path traversal', () => zipSync({ '../x.npy': A }), `entry "../x.npy": ${plainName}`],
  ['absolute path', () => zipSync({ '/etc/x.npy': A }), `entry "/etc/x.npy": ${plainName}`],
  ['Windows path', () => zip([{ name: '..\\x.npy', data: A }]), `entry "..\\\\x.npy": ${plainName}`],
  ['a directory', () => zipSync({ 'a/b.npy': A }), `entry "a/b.npy": ${plainName}`],
  ['a hidden file', () => zip([{ name: '.a.npy', data: A }]), `entry ".a.npy": ${plainName}`],
  ['a control character', () => zip([{ name: 'a\n.npy', data: A }]), `entry "a\\n.npy": ${plainName}`],
  ['non-ASCII name without the UTF-8 flag', () => zip([{ name: Uint8Array.of(0xe9, 0x2e, 0x6e, 0x70, 0x79), data: A }]), 'not a readable zip archive: entry 0: name is not ASCII and not flagged UTF-8'],
  ['duplicate member', () => zip([{ name: 'a.npy', data: A }, { name: 'a.npy', data: B }]), 'entry a.npy appears more than once'],
  ['local and central names differ', () => zip([{ name: 'a.npy', localName: 'b.npy', data: A }]), 'entry a.npy: its local header names "b.npy"'],
  ['overlapping members', () => {
    // b.npy's local header and data sit inside a.npy's stored data.
    const inner = zip([{ name: 'b.npy', data: B }]).subarray(0, 30 + 5 + B.length);
    return zip([{ name: 'a.npy', data: inner }, { name: 'b.npy', data: B, centralOnly: true, offset: 35 }]);
  }, 'entries a.npy and b.npy overlap (zip bomb?)'],
  ['encrypted member', () => zip([{ name: 'a.npy', data: A, flags: 1 }]), 'not a readable zip archive: entry a.npy: encrypted entries are not supported'],
  ['unsupported compression', () => zip([{ name: 'a.npy', data: A, method: 12 }]), 'entry a.npy: compression method 12 is not supported (stored or deflated only)'],
  ['CRC mismatch', () => zip([{ name: 'a.npy', data: A, crc: 1234 }]), 'entry a.npy: CRC-32 mismatch (corrupt data)'],
  ['stored size differs from data', () => zip([{ name: 'a.npy', data: A, size: 200 }]), 'entry a.npy is stored with 144 bytes but declares 200'],
  ['declared size over the limit', () => zip([{ name: 'a.npy', data: deflateSync(A), method: 8, size: 0xfffffff0, crc: crc32(A) }]), 'entry a.npy inflates to 4294967280 bytes, over the 2147523660-byte limit'],
  ['zip bomb: inflates far past its declared size', () => {
    const big = new Uint8Array(64 << 20); // ~64 KiB deflated
    big.set(A);
    return zip([{ name: 'a.npy', data: deflateRawSync(big, { level: 9 }), method: 8, size: A.length, crc: crc32(A) }]);
  }, 'entry a.npy: inflates past the 144 bytes the zip declares (zip bomb?)'],
  ['zip bomb: declared size far past what its NPY header says', () => {
    const big = new Uint8Array(1 << 20);
    big.set(A);
    return zip([{ name: 'a.npy', data: deflateSync(big), method: 8, size: 1 << 30, crc: 0 }]);
  }, 'entry a.npy: the zip declares 1073741824 bytes, its NPY header (<f4, shape (4,)) makes 144'],
  ['total over the limit', () => zip(Array.from({ length: 3 }, (_, k) => ({ name: `a${k}.npy`, data: deflateSync(A), method: 8, size: 2 ** 31, crc: 0 }))), 'entries inflate to more than the 4294967296-byte limit in all'],
  ['truncated deflate stream', () => {
    const d = deflateSync(encodeNpy({ shape: [256], data: Float32Array.from({ length: 256 }, Math.random) }));
    return zip([{ name: 'a.npy', data: d.subarray(0, d.length >> 1), method: 8, size: 128 + 1024, crc: 0 }]);
  }, /^entry a\.npy: corrupt deflate data \(unexpected EOF\)$|^entry a\.npy: inflates to \d+ bytes, the zip declares 1152 \(truncated\?\)$/],
  ['zip bomb: header and zip agree, the deflate stream goes on', () => {
    const npy16k = encodeNpy({ shape: [16384], data: new Float32Array(16384) });
    const big = new Uint8Array(64 << 20);
    big.set(npy16k);
    return zip([{ name: 'a.npy', data: deflateRawSync(big, { level: 9 }), method: 8, size: npy16k.length, crc: crc32(npy16k) }]);
  }, 'entry a.npy: inflates past the 65664 bytes the zip declares (zip bomb?)'],
  ['truncated deflate stream of a large member', () => {
    const d = deflateRawSync(noise);
    return zip([{ name: 'a.npy', data: d.subarray(0, Math.floor(d.length * 0.6)), method: 8, size: noise.length, crc: crc32(noise) }]);
  }, 'entry a.npy: corrupt deflate data (unexpected end of file)'],
  ['deflate stream shorter than the declared size', () => zip([{ name: 'a.npy', data: deflateRawSync(noise.subarray(0, 100000)), method: 8, size: noise.length, crc: crc32(noise) }]), 'entry a.npy: inflates to 100000 bytes, the zip declares 1048704 (truncated?)'],
  ['truncated archive', () => zipSync({ 'a.npy': A }).subarray(0, 100), 'not a readable zip archive: no end of central directory record (truncated, or not a zip)'],
  ['archive cut before its last byte', () => { const z = zipSync({ 'a.npy': A }); return z.subarray(0, z.length - 1); }, 'not a readable zip archive: no end of central directory record (truncated, or not a zip)'],
  ['central directory past the end', () => { const z = zipSync({ 'a.npy': A }); new DataView(z.buffer).setUint32(z.length - 6, z.length, true); return z; }, /^not a readable zip archive: central directory \(\d+ bytes at \d+\) overlaps its end record \(truncated\?\)$/],
  ['more entries than the directory holds', () => { const z = zipSync({ 'a.npy': A }); new DataView(z.buffer).setUint16(z.length - 12, 500, true); return z; }, /^not a readable zip archive: central directory of \d+ bytes cannot hold 500 entries$/],
  ['member data runs into the directory', () => zip([{ name: 'a.npy', data: A, csize: A.length + 10, size: A.length + 10 }]), 'entry a.npy: 154 bytes of data at 35 run into the central directory (truncated?)'],
  ['a member that is not .npy', () => zipSync({ 'readme.txt': A }), 'entry readme.txt is not a .npy file'],
  ['a hostile .npy inside', () => zipSync({ 'a.npy': npy(dict("'|O'")) }), /^dtype \|O is refused/],
];
for (const [what, make, message] of NPZ) {
  test(`hostile .npz refused with a FixtureError: ${what}`, (t) => {
    const bytes = make();
    const m = typeof message === 'string' ? `h.npz: ${message}` : new RegExp(`^h\\.npz:(?: |a\\.npy: )(?:${message.source.replace(/^\^/, '')})`);
    t.throws(() => decodeNpz(bytes, 'h.npz'), { name: 'FixtureError', message: m });
  });
}

test('the hand-made zips are valid when nothing lies: stored and deflated members decode', (t) => {
  const z = decodeNpz(zip([{ name: 'a.npy', data: A }, { name: 'b.npy', data: deflateSync(B), method: 8, size: B.length, crc: crc32(B) }]), 'ok.npz');
  t.deepEqual([...z.keys()], ['a', 'b']);
  t.deepEqual(z.get('a')!.data, Float32Array.of(1, 2, 3, 4));
  t.deepEqual(z.get('b')!.data, Int32Array.of(5, 6));
});

test('the size limits can be lowered per call', (t) => {
  const z = zipSync({ 'a.npy': A, 'b.npy': A });
  t.throws(() => decodeNpz(z, 'l.npz', { maxEntryBytes: 143 }), { name: 'FixtureError', message: 'l.npz: entry a.npy inflates to 144 bytes, over the 143-byte limit' });
  t.throws(() => decodeNpz(z, 'l.npz', { maxTotalBytes: 287 }), { name: 'FixtureError', message: 'l.npz: entries inflate to more than the 287-byte limit in all' });
  t.is(decodeNpz(z, 'l.npz', { maxEntryBytes: 144, maxTotalBytes: 288 }).size, 2);
});
