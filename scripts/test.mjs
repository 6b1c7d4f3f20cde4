// Runs ava with the TAP reporter, passes its output through, and ends with the plain line
// `N passed, N failed` that CI reads. Extra arguments (test files) go to ava.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

const ava = spawn(process.execPath, ['node_modules/ava/entrypoints/cli.mjs', '--tap', ...process.argv.slice(2)], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
let passed = 0, failed = 0, skipped = 0;
createInterface({ input: ava.stdout }).on('line', (line) => {
  console.log(line);
  if (/^not ok \d+/.test(line)) failed++;
  else if (/^ok \d+ .*# SKIP/.test(line)) skipped++;
  else if (/^ok \d+/.test(line)) passed++;
});
ava.on('close', (code) => {
  // A crashed worker or an uncaught error fails the run even when no test line says so.
  if (code !== 0 && failed === 0) failed = 1;
  console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  process.exit(code ?? 1);
});
