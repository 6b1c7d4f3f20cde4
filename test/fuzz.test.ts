// The fuzzer (fuzz/run.ts): a short seeded slice makes no crash, and the crash and hang handling
// itself works (a child killed by a signal at a known call is reported with that seed and index,
// replayed, and the run goes on). The long runs are `npm run fuzz` (README) and CI's slice.
import test from 'ava';
import { formatReport, fuzz } from '../fuzz/run.ts';

const SEED = 20261126;
const CALLS = 3000;

test.serial(`fuzz slice: ${CALLS} calls of seed ${SEED} and hostile KVSTREAM_NUM_THREADS values make no crash`, async (t) => {
  const r = await fuzz({ seed: SEED, calls: CALLS, envValues: ['0', '100000000', '2x'] });
  t.log(`${r.calls} calls, ${r.callsPerSecond} calls/s`);
  t.is(r.crashes.length, 0, formatReport(r));
  t.deepEqual(r.env.filter((e) => e.crash || !e.clear), [], formatReport(r));
  t.is(r.calls, CALLS);
  t.deepEqual(r.stats.fuzzer, {}, 'every call could be generated');
});

test.serial('a crash is reported with its seed and call index, replayed alone, and the run goes on', async (t) => {
  const r = await fuzz({ seed: 5, calls: 60, envValues: [], env: { KVSTREAM_FUZZ_SELFTEST_CRASH: '41' } });
  t.is(r.crashes.length, 1, formatReport(r));
  const [c] = r.crashes;
  t.like(c, { seed: 5, index: 41, how: 'SIGSEGV' });
  t.regex(c.replay ?? '', /^crashes alone: SIGSEGV/);
  t.truthy(c.target && c.args, 'the replay names the call and its arguments');
  t.is(r.restarts, 1);
  t.is(r.calls, 60, 'calls after the crash were made by a new child');
  t.regex(formatReport(r), /crash at call #41 \(seed 5, call 41\): .+ → SIGSEGV/);
});

test.serial('a call that never returns is reported as a hang', async (t) => {
  const r = await fuzz({ seed: 5, calls: 30, hang: 2, envValues: [], env: { KVSTREAM_FUZZ_SELFTEST_HANG: '7' } });
  t.is(r.crashes.length, 1, formatReport(r));
  t.like(r.crashes[0], { index: 7, how: 'hang (no progress for 2 s)' });
  t.is(r.calls, 30);
});
