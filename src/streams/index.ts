// Node streams in and out of the RxJS operators: sources from Readables, async iterables and
// highland streams (token rows or .npy bytes), sinks to Readables and async iterables.
export { fromTokens } from './fromTokens.ts';
export type { FromTokensOptions, TokenRows } from './fromTokens.ts';
export { fromNpyBytes } from './fromNpyBytes.ts';
export type { FromNpyBytesOptions } from './fromNpyBytes.ts';
export { toReadable } from './toReadable.ts';
export type { ToReadableOptions } from './toReadable.ts';
export { toAsyncIterable } from './toAsyncIterable.ts';
export { toNpyBytes } from './toNpyBytes.ts';
export type { HighlandLike, HighlandNil, PullOptions, StreamSource } from './pull.ts';
export { awaitEach } from './awaitEach.ts';
