// Read-ahead credit: how a source learns that the asynchronous stages after it are done with a
// chunk, so it never has more than `highWaterMark` chunks out at once, with nothing wired.
//
// A source delivers each chunk under a ticket (subscriber.next runs inside `ticket.deliver`).
// Whatever the pipeline does synchronously with the chunk happens inside that call. A stage
// that keeps working after next() returns (awaitEach, attendChunk async, toReadable's buffer)
// calls `retain()` while the chunk is being delivered to it, and releases that hold when it is
// done: after its own output was delivered downstream, under the same ticket, so a later
// asynchronous stage can retain it in turn. The source drops its own hold when next() returns;
// the chunk is released when the last hold is. A synchronous pipeline therefore releases every
// chunk on return. The ticket is a delivery context, not a property of the value: a user's map
// that builds new objects between two stages keeps the chain intact.

/** A hold on one delivery's ticket (or on nothing, outside a ticketed delivery). */
export interface Hold {
  /** Drops this hold (once; later calls do nothing). The ticket is freed with its last hold. */
  release(): void;
  /** Runs `fn` (a subscriber.next) as a delivery under this hold's ticket; returns its result. */
  deliver<T>(fn: () => T): T;
}

/** The ticket of the delivery under way (innermost, when deliveries nest). */
let current: Ticket | undefined;

class Ticket {
  private holds = 1;
  constructor(private onFree: (() => void) | undefined) {}

  hold(): Hold {
    let held = true;
    return {
      release: () => {
        if (!held) return;
        held = false;
        if (--this.holds === 0) {
          const f = this.onFree;
          this.onFree = undefined;
          f?.();
        }
      },
      deliver: (fn) => run(this, fn),
    };
  }

  retain(): Hold {
    this.holds++;
    return this.hold();
  }
}

function run<T>(ticket: Ticket | undefined, fn: () => T): T {
  const outer = current;
  current = ticket;
  try {
    return fn();
  } finally {
    current = outer;
  }
}

/** No ticket: a value that arrived outside any ticketed delivery. */
const none: Hold = { release: () => {}, deliver: (fn) => run(undefined, fn) };

/**
 * A source's ticket for one chunk, held once by the source; `onFree` runs when the source and
 * every stage that retained it have released it.
 */
export function ticket(onFree: () => void): Hold {
  return new Ticket(onFree).hold();
}

/** A hold on the ticket of the delivery under way: call it in next(), release when done. */
export function retain(): Hold {
  return current ? current.retain() : none;
}

/** Delivers outside any ticket (a source paced by `demand`, whose chunks no stage holds). */
export const untracked: Hold = none;
