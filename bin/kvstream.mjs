#!/usr/bin/env node
// The `kvstream` command of the package: the compiled CLI (dist/cli.js, built by `npm pack`).
// prog names the command in usage text and hints (`npm run pipeline --` inside the repo).
import { run } from '../dist/cli.js';

run({ prog: 'kvstream' });
