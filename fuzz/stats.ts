// Counts the fuzz child reports to the parent (as JSON lines) and how the parent adds them up.

export interface ErrorKind {
  n: number;
  /** seed:index of the first one. */
  example: string;
  message: string;
}

export interface Stats {
  calls: number;
  /** Calls that returned (or resolved) normally. */
  returned: number;
  /** Thrown error class name -> count (FuzzTrap: our own trap, propagated). */
  threw: Record<string, number>;
  /** Errors of a class other than TypeError, RangeError or a KvstreamError subclass, by signature. */
  unclear: Record<string, ErrorKind>;
  /** TypeError/RangeError with a JS engine message (e.g. "Cannot read properties of undefined"), naming no argument. */
  engine: Record<string, ErrorKind>;
  /** Calls per target. */
  targets: Record<string, number>;
  /** Milliseconds spent per target (generation and call). */
  ms: Record<string, number>;
  /** Errors thrown while generating a call: bugs in the fuzzer itself. */
  fuzzer: Record<string, ErrorKind>;
  rssMB: number;
}

export const emptyStats = (): Stats => ({ calls: 0, returned: 0, threw: {}, unclear: {}, engine: {}, targets: {}, ms: {}, fuzzer: {}, rssMB: 0 });

/** Adds `s` into `into`. */
export function merge(into: Stats, s: Stats): void {
  into.calls += s.calls;
  into.returned += s.returned;
  for (const [k, n] of Object.entries(s.threw)) into.threw[k] = (into.threw[k] ?? 0) + n;
  for (const [k, n] of Object.entries(s.targets)) into.targets[k] = (into.targets[k] ?? 0) + n;
  for (const [k, n] of Object.entries(s.ms)) into.ms[k] = (into.ms[k] ?? 0) + n;
  for (const table of ['unclear', 'engine', 'fuzzer'] as const) {
    for (const [sig, e] of Object.entries(s[table])) {
      const have: ErrorKind | undefined = into[table][sig];
      if (have) have.n += e.n;
      else into[table][sig] = { ...e };
    }
  }
  into.rssMB = Math.max(into.rssMB, s.rssMB);
}
