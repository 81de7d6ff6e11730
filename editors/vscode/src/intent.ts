// `triage/intent` (pre-warming the likely model): when to tell the server that the user is
// about to ask. The Ask prompt/panel opening and closing, and a selection of at least five
// lines that has stood still for ~300 ms (and its clearing). Pure: timers are injected.

import type { IntentParams, Range } from "./protocol";

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const MIN_SELECTION_LINES = 5;
export const SELECTION_DEBOUNCE_MS = 300;

/** Lines a selection covers; one ending at column 0 does not count its last line. */
export function selectionLines(range: Range): number {
  if (range.start.line === range.end.line && range.start.character === range.end.character) return 0;
  return range.end.line - range.start.line + (range.end.character > 0 ? 1 : 0);
}

export class IntentTracker {
  private chatActive = false;
  private selectionActive = false;
  private pending: unknown;

  constructor(
    private readonly send: (params: IntentParams) => void,
    private readonly timers: Timers = { setTimeout: (fn, ms) => setTimeout(fn, ms), clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) },
  ) {}

  chatOpened(): void {
    if (this.chatActive) return;
    this.chatActive = true;
    this.send({ kind: "chat", active: true });
  }

  chatClosed(): void {
    if (!this.chatActive) return;
    this.chatActive = false;
    this.send({ kind: "chat", active: false });
  }

  /** Every selection change of the active editor; `range` undefined or empty when cleared. */
  selectionChanged(uri: string, range: Range | undefined): void {
    this.cancelPending();
    const large = range !== undefined && selectionLines(range) >= MIN_SELECTION_LINES;
    if (!large) {
      if (this.selectionActive) {
        this.selectionActive = false;
        this.send({ kind: "selection", active: false });
      }
      return;
    }
    this.pending = this.timers.setTimeout(() => {
      this.pending = undefined;
      this.selectionActive = true;
      this.send({ kind: "selection", active: true, textDocument: { uri }, range });
    }, SELECTION_DEBOUNCE_MS);
  }

  dispose(): void {
    this.cancelPending();
  }

  private cancelPending(): void {
    if (this.pending !== undefined) {
      this.timers.clearTimeout(this.pending);
      this.pending = undefined;
    }
  }
}
