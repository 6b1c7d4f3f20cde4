// Child script for test/native.test.ts (run with --expose-gc; KVSTREAM_ADDON names the addon).
//   transfer: every array of a running attnUpdateAsync is transferred to a worker that drops
//             it and exits; memory is collected and reused while the fold runs.
//   terminate: a worker queues a fold and is terminated while it runs.
//   exit: the main thread exits while a worker's fold runs.
// Prints one line and exits 0 when the process survives.
const { Worker } = require('node:worker_threads');
const addon = process.env.KVSTREAM_ADDON;
const b = require(addon);
const d = { B: 1, H: 4, Hkv: 4, T: 256, S: 4096, sCap: 4096, dK: 64, dV: 64 };
const o = { scale: 0.125, causal: false, qOffset: 0, sOffset: 0, dropoutP: 0, seed: 0 };
const F = (n, x) => new Float32Array(n).fill(x);
const foldCode = `
  const b = require(${JSON.stringify(addon)});
  const d = ${JSON.stringify(d)}, o = ${JSON.stringify(o)};
  const F = (n, x) => new Float32Array(n).fill(x);
  b.attnUpdateAsync(d, o, F(1024 * 64, 0.1), F(4 * 4096 * 64, 0.2), F(4 * 4096 * 64, 0.3), F(1024, -Infinity), F(1024, 0), F(1024 * 64, 0), () => {});
  require('node:worker_threads').parentPort.postMessage('queued');`;

const mode = process.argv[2];
if (mode === 'transfer') {
  const arrs = [F(1024 * 64, 0.1), F(4 * 4096 * 64, 0.2), F(4 * 4096 * 64, 0.3), F(1024, -Infinity), F(1024, 0), F(1024 * 64, 0)];
  const done = new Promise((res) => b.attnUpdateAsync(d, o, ...arrs, res));
  const w = new Worker('require("node:worker_threads").parentPort.once("message", () => process.exit(0))', { eval: true });
  w.postMessage(arrs.map((a) => a.buffer), arrs.map((a) => a.buffer));
  w.on('exit', async () => {
    for (let i = 0; i < 5; i++) { global.gc(); F(4 * 4096 * 64, NaN); }
    const err = await done;
    console.log(`transfer: detached ${arrs[5].length === 0}, callback error ${err ?? 'none'}`);
  });
} else if (mode === 'terminate') {
  const w = new Worker(foldCode, { eval: true });
  w.on('message', () => w.terminate());
  w.on('exit', () => console.log('terminate: worker gone, process alive'));
} else if (mode === 'exit') {
  const w = new Worker(foldCode, { eval: true });
  w.on('message', () => { console.log('exit: exiting during a worker fold'); process.exit(0); });
}
