/**
 * Sent RTP packets by sequence number, for NACK retransmission beyond werift's own 128-packet history
 * (at 8 Mbit/s that is ~150 ms: less than one WAN round trip plus the browser's NACK delay).
 * A ring indexed by sequence number; a slot is valid only if it still holds that exact number.
 */
export class RtpHistory<T> {
  readonly capacity: number;
  readonly #items: (T | undefined)[];
  readonly #seqs: Int32Array;

  constructor(capacity: number) {
    // A power of two that divides 65536, so the ring index wraps with the 16-bit sequence number.
    let c = 128;
    while (c < capacity && c < 32768) c *= 2;
    this.capacity = c;
    this.#items = new Array<T | undefined>(c);
    this.#seqs = new Int32Array(c).fill(-1);
  }

  /** Ring size for `ms` of media at `bps` with payloads of about `payloadBytes`. */
  static sizeFor(ms: number, bps: number, payloadBytes: number): number {
    // Frames end in short packets: assume 80 % average fill.
    return Math.ceil(((bps / 8) * (ms / 1000)) / (payloadBytes * 0.8));
  }

  put(seq: number, item: T): void {
    const i = seq & (this.capacity - 1);
    this.#seqs[i] = seq;
    this.#items[i] = item;
  }

  get(seq: number): T | undefined {
    const i = seq & (this.capacity - 1);
    return this.#seqs[i] === seq ? this.#items[i] : undefined;
  }

  clear(): void {
    this.#seqs.fill(-1);
    this.#items.fill(undefined);
  }
}
