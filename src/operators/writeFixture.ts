// Moved to src/fixtures/writeFixture.ts (fixtures sit above operators); this re-export stays
// until src/operators/index.ts stops exporting it.
export { writeFixture } from '../fixtures/writeFixture.ts';
