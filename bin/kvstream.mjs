#!/usr/bin/env node
// The `kvstream` command of the package: the compiled CLI (dist/cli.js, built by `npm pack`).
import '../dist/cli.js';
