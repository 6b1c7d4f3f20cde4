// W5, run in its own process so peak RSS is this workload's alone:
//   tsx bench/w5.ts PATH THREADS MODE [READ_AHEAD]
//   MODE = raw (drain the disk source) | stream (full pipeline, fromNpy with READ_AHEAD chunks
//   read ahead, default 2) | compute (the same pipeline on one in-memory chunk repeated: the
//   stream's compute alone, no reads)
// prints {"ms": total wall time, "bytes": file bytes, "maxRssMiB": this process's peak RSS}.
import { readFileSync, statSync } from 'node:fs';
import { lastValueFrom, map, range } from 'rxjs';
import { MultiHeadAttention } from '../src/mha.ts';
import { setNumThreads } from '../src/native.ts';
import { NpyFile } from '../src/io/npyfile.ts';
import { attendChunk, fromNpy, projectKv } from '../src/operators/index.ts';
import { Rng } from '../src/random.ts';

const [path, threads, mode, readAhead = '2'] = process.argv.slice(2);
setNumThreads(Number(threads));
const CHUNK = 1024; // 2 MiB of x_kv per chunk: peak RSS stays ~150 MiB (4096: ~220 MiB)
const mha = MultiHeadAttention.random({ dModel: 512, numHeads: 8 }, 5);
const xQ = new Rng(6).normalTensor([1, 64, 512]); // a fixed query block
let source = fromNpy(path, CHUNK, { readAhead: mode === 'stream' ? Number(readAhead) : 0 });
if (mode === 'compute') {
  const file = await NpyFile.open(path);
  const S = file.shape[1];
  const x = await file.read(0, CHUNK);
  await file.close();
  source = range(0, S / CHUNK).pipe(map((index) => ({ index, start: index * CHUNK, end: (index + 1) * CHUNK, x })));
}
const t0 = performance.now();
if (mode === 'raw') await lastValueFrom(source);
else await lastValueFrom(source.pipe(projectKv(mha), attendChunk(mha, xQ)));
const ms = performance.now() - t0;
// VmHWM, not getrusage's maxrss: the latter survives exec and would report the bench parent's peak.
const hwmKiB = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]);
console.log(JSON.stringify({ ms, bytes: statSync(path).size, maxRssMiB: hwmKiB / 1024 }));
