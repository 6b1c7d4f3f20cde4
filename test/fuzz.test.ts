// The fuzzer (fuzz/run.ts): a short seeded slice makes no crash, and the crash and hang handling
// itself works (a child killed by a signal at a known call is reported with that seed and index,
// replayed, and the run goes on). The long runs are `npm run fuzz` (README) and CI's slice.
import test from 'ava';
import { processExit, workerAsync } from '../fuzz/calls.ts';
import type { Api, Call, Fn } from '../fuzz/calls.ts';
import { formatReport, fuzz } from '../fuzz/run.ts';
import { Gen } from '../fuzz/values.ts';
import * as kv from '../src/index.ts';
import { binding } from '../src/native.ts';

const SEED = 20261126;
const CALLS = 3000;

test.serial(`fuzz slice: ${CALLS} calls of seed ${SEED}, and KVSTREAM_NUM_THREADS=100000000 at load, make no crash`, async (t) => {
  const r = await fuzz({ seed: SEED, calls: CALLS, envValues: ['100000000'] });
  t.log(`${r.calls} calls in ${r.seconds.toFixed(1)} s`);
  t.is(r.crashes.length, 0, formatReport(r));
  t.deepEqual(r.env.filter((e) => e.crash || !e.clear), [], formatReport(r));
  t.is(r.calls, CALLS);
  t.deepEqual(r.stats.fuzzer, {}, 'every call could be generated');
  t.deepEqual(r.stats.unclear, {}, 'poolCheck\'s task error is tallied as expected, and no result check failed');
});

// The rare teardown calls (1 in 2500 and 1 in 20000 of a run), made here directly: worker_threads
// isolates terminated (at once or after queueing), calling process.exit() or throwing with
// attnUpdateAsync folds queued (paged and int8 among them), and process.exit() on the main
// thread of a separate node during a worker's folds. A crash takes this test process down.
test.serial('worker_threads terminated, exiting or throwing with attnUpdateAsync folds queued, and process.exit during folds, do not crash', async (t) => {
  const api: Api = { binding: binding as unknown as Record<string, Fn>, kv, paths: ['auto'] };
  const first = (make: (g: Gen) => Call, like: RegExp): Call => {
    for (let i = 0; i < 10_000; i++) {
      const c = make(new Gen(SEED, i));
      if (like.test(c.d)) return c;
    }
    throw new Error(`no call matches ${like}`);
  };
  const calls = [
    first((g) => workerAsync(g, api), /then exit\(\d\);.*then throw/),
    first((g) => workerAsync(g, api), /paged\) then terminate-now; .*i8.*then terminate;/),
    first((g) => workerAsync(g, api), /i8, paged\) then detach.*main thread folds too/),
    first((g) => processExit(g), /a worker's/),
    first((g) => processExit(g), /its own.*queueing more/),
    first((g) => workerAsync(g, api), /queueing another \(20 more\), then (terminate|exit)/),
  ];
  for (const c of calls) {
    t.log(`${c.target}(${c.d})`);
    await t.notThrowsAsync(async () => c.run());
  }
});

test.serial('a crash and a hang are reported with seed and call index, the crash is replayed alone, and the run goes on', async (t) => {
  const r = await fuzz({ seed: 5, calls: 25, hang: 2, envValues: [], replays: 1, env: { KVSTREAM_FUZZ_SELFTEST_CRASH: '11', KVSTREAM_FUZZ_SELFTEST_HANG: '17' } });
  t.is(r.crashes.length, 2, formatReport(r));
  const [crash, hang] = r.crashes;
  t.like(crash, { seed: 5, index: 11, how: 'SIGSEGV' });
  t.regex(crash.replay ?? '', /^crashes alone: SIGSEGV/);
  t.truthy(crash.target && crash.args, 'the replay names the call and its arguments');
  t.regex(formatReport(r), /crash at call #11 \(seed 5, call 11\): .+ → SIGSEGV/);
  t.like(hang, { seed: 5, index: 17, how: 'hang (no progress for 2 s)' });
  t.is(r.restarts, 2);
  t.is(r.calls, 25, 'calls after each crash were made by a new child');
});
