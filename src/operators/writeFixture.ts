import { concatMap } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import { writeCase } from '../fixture.ts';
import type { FixtureCase } from '../fixture.ts';
import type { ManifestEntry } from '../manifest.ts';

/**
 * Sink: writes each case's `.npz` into `dir`, then adds its manifest entry (under the manifest
 * lock, atomically), one case at a time; emits the entries written.
 */
export function writeFixture(dir: string): OperatorFunction<FixtureCase, ManifestEntry> {
  return concatMap((c) => writeCase(dir, c));
}
