// Runs the CLI (src/cli.ts) in a child process.
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface CliResult { code: number | null; stdout: string; stderr: string }

export function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import=tsx', 'src/cli.ts', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    // 'close', not 'exit': exit can fire before the last of stdout has been read.
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export const tmp = (prefix = 'kvstream-cli-') => mkdtempSync(join(tmpdir(), prefix));
