// Child process for the manifest concurrency tests:
//   upsert-worker.ts DIR PREFIX COUNT [PAD]  upserts COUNT entries named PREFIX-i (PAD: bytes of
//   description, to make each write large), forever when COUNT is 0.
import { upsertEntry } from '../../src/fixtures/store.ts';
import { entry } from './entries.ts';

const [dir, prefix, countArg, padArg] = process.argv.slice(2);
const count = Number(countArg), pad = Number(padArg ?? 0);

for (let i = 0; count === 0 || i < count; i++) await upsertEntry(dir, entry(`${prefix}-${i % 1000}`, 'x'.repeat(pad)));
