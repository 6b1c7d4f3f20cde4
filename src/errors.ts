/** Base class of every error kvstream throws; `name` is the subclass name. */
export class KvstreamError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A tensor or dimension does not have the shape the call needs. */
export class ShapeError extends KvstreamError {}

/** An option has a value outside its domain (scale, dropout p, seed, offsets, ...). */
export class ArgumentError extends KvstreamError {}

/** A fixture file or manifest is missing, malformed, or disagrees with its manifest entry. */
export class FixtureError extends KvstreamError {}

/** The native addon could not be loaded, or rejected a call the TypeScript checks let through. */
export class NativeError extends KvstreamError {}
