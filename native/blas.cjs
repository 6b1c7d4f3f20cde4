// Build-time BLAS choice for binding.gyp. Usage: node native/blas.cjs mode|cflags|libs
// OpenBLAS is used when `pkg-config --exists openblas` succeeds, unless KVSTREAM_BLAS=portable.
'use strict';
const { spawnSync } = require('node:child_process');

function pkgConfig(...args) {
  const r = spawnSync('pkg-config', args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

const forced = process.env.KVSTREAM_BLAS;
const mode = forced === 'portable' ? 'portable' : pkgConfig('--exists', 'openblas') !== null ? 'openblas' : 'portable';
const what = process.argv[2];
if (what === 'mode') {
  if (mode === 'portable') {
    const why = forced === 'portable' ? 'KVSTREAM_BLAS=portable' : 'OpenBLAS not found by pkg-config (apt-get install libopenblas-dev, then npm run build:native)';
    process.stderr.write(`kvstream: building the portable blocked GEMM: ${why}\n`);
  } else {
    process.stderr.write('kvstream: building against OpenBLAS\n');
  }
  process.stdout.write(mode);
} else if (what === 'cflags') {
  process.stdout.write(mode === 'openblas' ? pkgConfig('--cflags', 'openblas') : '');
} else if (what === 'libs') {
  process.stdout.write(mode === 'openblas' ? pkgConfig('--libs', 'openblas') : '');
} else {
  process.stderr.write('usage: node native/blas.cjs mode|cflags|libs\n');
  process.exit(2);
}
