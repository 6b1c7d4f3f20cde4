// The built-in cases, as a table of declarations (PipelineSpec). They are declared in
// src/fixtures/cases.ts, so the CLI in src/ depends on nothing here; this module is the table's
// user-facing name. A case of your own is a definePipeline({...}) like those, run with
// buildCase(spec).pipe(writeFixture(dir)); see docs/fixtures.md.
import { BUILTIN_CASES } from '../src/fixtures/cases.ts';
import type { PipelineSpec } from '../src/fixtures/recipes.ts';

export { BUILTIN_CASES };
export const PIPELINES: ReadonlyMap<string, PipelineSpec> = new Map(BUILTIN_CASES.map((p) => [p.name, p]));
