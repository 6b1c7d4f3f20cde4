// W5, run in its own process so peak RSS is this workload's alone:
//   tsx bench/w5.ts PATH THREADS MODE   MODE = raw (drain the disk source) | stream (full pipeline)
// prints {"ms": total wall time, "bytes": file bytes, "maxRssMiB": this process's peak RSS}.
import { readFileSync, statSync } from 'node:fs';
import { lastValueFrom } from 'rxjs';
import { MultiHeadAttention } from '../src/mha.ts';
import { setNumThreads } from '../src/native.ts';
import { attendChunk, fromNpy, projectKv } from '../src/operators/index.ts';
import { Rng } from '../src/random.ts';

const [path, threads, mode] = process.argv.slice(2);
setNumThreads(Number(threads));
const CHUNK = 1024; // 4 MiB of x_kv per chunk: peak RSS stays ~150 MiB (4096: ~220 MiB)
const mha = MultiHeadAttention.random({ dModel: 512, numHeads: 8 }, 5);
const xQ = new Rng(6).normalTensor([1, 64, 512]); // a fixed query block
const t0 = performance.now();
if (mode === 'raw') await lastValueFrom(fromNpy(path, CHUNK));
else await lastValueFrom(fromNpy(path, CHUNK).pipe(projectKv(mha), attendChunk(mha, xQ)));
const ms = performance.now() - t0;
// VmHWM, not getrusage's maxrss: the latter survives exec and would report the bench parent's peak.
const hwmKiB = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]);
console.log(JSON.stringify({ ms, bytes: statSync(path).size, maxRssMiB: hwmKiB / 1024 }));
