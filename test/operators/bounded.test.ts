// Bounded memory through async stages with nothing wired: a 1 GiB .npy streamed from disk
// through attendChunk({ async: true }) into a slow sink, in a child process that reports its
// peak RSS, the event loop's worst timer lateness and how far reads ran ahead of the sink.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { npyHeader } from '../../src/io/npy.ts';
import { Rng } from '../../src/random.ts';

// [1, S, 64] float32: one block of 4096 random tokens written S / 4096 times, so the file is
// never in memory, and every chunk of CHUNK = 2 blocks (2 MiB) holds the same keys.
const D = 64, BLOCK = 4096, CHUNK = 2 * BLOCK;
const GIB_TOKENS = 2 ** 30 / (4 * D); // 4,194,304 tokens: 1 GiB of data
// The sink awaits a timer this long per chunk (512 chunks: >= 5 s), about twice what the rest of
// the pipeline takes per chunk on this 2-core machine: the sink is the slow stage.
const SINK_MS = 10;
const HIGH_WATER_MARK = 2; // the sources' default

/** Writes x [1,S,D] in pieces of one block and removes the folder in t.teardown. */
function writeRepeated(t: ExecutionContext, S: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'kvstream-bounded-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'x.npy');
  const block = new Uint8Array(new Rng(5).normalTensor([1, BLOCK, D]).data.buffer);
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, npyHeader([1, S, D], '<f4'));
    for (let s = 0; s < S; s += BLOCK) writeSync(fd, block);
  } finally {
    closeSync(fd);
  }
  return path;
}

interface Report {
  seconds: number; maxRssMiB: number; sampledRssMiB: number; worstLateMs: number; worstRawLateMs: number; loadAverage: number;
  reads: number; consumed: number; maxAhead: number;
  firstOutput: number[]; lastOutput: number[]; firstLse: number[]; lastLse: number[]; maxAbsV: number; wOColSum: number;
}

/** Runs bounded-child.ts and parses its JSON line. */
function child(path: string, sink: string, sinkMs = SINK_MS): Promise<Report> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import=tsx', 'test/operators/bounded-child.ts', path, String(CHUNK), String(sinkMs), sink], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('close', (code) => {
      if (code !== 0) return reject(new Error(`bounded-child.ts ${sink} exited with ${code}: ${stderr}`));
      resolve(JSON.parse(stdout) as Report);
    });
  });
}

const u = 2 ** -24; // float32 unit roundoff

test('1 GiB .npy → fromNpy → attendChunk({ async: true }) → a slow sink: peak RSS < 200 MiB, timers within 20 ms, reads - consumed <= 2', async (t) => {
  t.timeout(120_000);
  const path = writeRepeated(t, GIB_TOKENS);
  const chunks = GIB_TOKENS / CHUNK;
  for (const sink of ['awaitEach', 'iterable']) {
    const r = await child(path, sink);
    const what = `${sink} sink (${r.seconds.toFixed(1)} s, load average ${r.loadAverage})`;
    t.log(`${what}: peak RSS ${r.maxRssMiB.toFixed(1)} MiB, worst lateness ${r.worstLateMs.toFixed(1)} ms (raw ${r.worstRawLateMs.toFixed(1)} ms), read ahead ${r.maxAhead}`);
    t.is(r.consumed, chunks, what);
    t.is(r.reads, chunks, what);
    t.true(r.maxAhead <= HIGH_WATER_MARK, `${what}: the source read ${r.maxAhead} chunks ahead of the sink (bound ${HIGH_WATER_MARK})`);
    t.is(r.maxAhead, HIGH_WATER_MARK, `${what}: the sink is the slow stage, so reads run up to the bound`);
    t.true(r.maxRssMiB < 200, `${what}: peak RSS ${r.maxRssMiB.toFixed(1)} MiB (bound 200)`);
    t.true(r.worstLateMs < 20, `${what}: a 10 ms timer fired ${r.worstLateMs.toFixed(1)} ms late with the main thread on the CPU (raw lateness ${r.worstRawLateMs.toFixed(1)} ms)`);

    // Every chunk holds the same keys, so after all R = chunks of them the state is R copies of
    // the first: lse grows by ln R and the output is unchanged. Float32 sums of positive terms
    // (l) and of p·v (acc) over the n = CHUNK + R additions on any path have relative error at
    // most γ_n = n·u / (1 - n·u) (of Σ p|v| for acc); o = acc / l then errs by at most
    // 2γ_n·max|v|, the output by that times max_j Σ_i |wO[i,j]|; lse by γ_n plus rounding.
    const n = CHUNK + chunks, gamma = (n * u) / (1 - n * u);
    let worstLse = 0, atLse = -1;
    r.firstLse.forEach((l0, i) => {
      const d = Math.abs(r.lastLse[i] - (l0 + Math.log(chunks)));
      if (d > worstLse) (worstLse = d), (atLse = i);
    });
    const lseBound = gamma + 4 * u * (Math.abs(r.lastLse[0]) + Math.log(chunks));
    t.true(worstLse <= lseBound, `${what}: lse after ${chunks} equal chunks is off ln(${chunks}) + first by ${worstLse} at [${atLse}] (bound ${lseBound})`);
    let worstOut = 0, atOut = -1;
    r.firstOutput.forEach((o0, i) => {
      const d = Math.abs(r.lastOutput[i] - o0);
      if (d > worstOut) (worstOut = d), (atOut = i);
    });
    const outBound = 2 * gamma * r.maxAbsV * r.wOColSum;
    t.true(worstOut <= outBound, `${what}: the output after ${chunks} equal chunks differs from the first's by ${worstOut} at [${atOut}] (bound ${outBound})`);
  }
});

test('controls: a blocked event loop shows in the lateness measure; a user concatMap sink is not bounded', async (t) => {
  t.timeout(60_000);
  const S = 64 * BLOCK; // 64 MiB, 32 chunks
  const path = writeRepeated(t, S);
  const blocked = await child(path, 'blocking');
  t.true(blocked.worstLateMs >= 30, `40 ms of CPU work in the sink showed as ${blocked.worstLateMs.toFixed(1)} ms of lateness (raw ${blocked.worstRawLateMs.toFixed(1)} ms)`);
  t.true(blocked.maxAhead <= HIGH_WATER_MARK, `blocking sink: read ${blocked.maxAhead} chunks ahead`);
  // docs/streams.md: concatMap holds no credit, so the source reads on while its queue grows
  // (a sink of 50 ms per chunk: far slower than the rest even on a loaded machine).
  const unbounded = await child(path, 'concatMap', 50);
  t.log(`blocking: lateness ${blocked.worstLateMs.toFixed(1)} ms; concatMap: read ahead ${unbounded.maxAhead} of ${S / CHUNK}, peak RSS ${unbounded.maxRssMiB.toFixed(1)} MiB`);
  t.is(unbounded.consumed, S / CHUNK);
  t.true(unbounded.maxAhead > 8 * HIGH_WATER_MARK, `concatMap sink: read ${unbounded.maxAhead} chunks ahead of the sink (expected far more than ${HIGH_WATER_MARK})`);
});
