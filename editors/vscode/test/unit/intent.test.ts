import assert from "node:assert/strict";
import { test } from "node:test";

import { IntentTracker, selectionLines } from "../../src/intent";
import type { IntentParams, Range } from "../../src/protocol";

class FakeTimers {
  now = 0;
  private next = 1;
  private pending = new Map<number, { at: number; fn: () => void }>();
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.pending.set(id, { at: this.now + ms, fn });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.pending.delete(handle as number);
  }
  advance(ms: number): void {
    this.now += ms;
    for (const [id, t] of [...this.pending]) {
      if (t.at <= this.now) {
        this.pending.delete(id);
        t.fn();
      }
    }
  }
}

const lines = (from: number, to: number, endCharacter = 3): Range => ({ start: { line: from, character: 0 }, end: { line: to, character: endCharacter } });

test("selection lines", () => {
  assert.equal(selectionLines(lines(0, 4)), 5);
  assert.equal(selectionLines(lines(0, 5, 0)), 5);
  assert.equal(selectionLines({ start: { line: 2, character: 1 }, end: { line: 2, character: 1 } }), 0);
});

test("chat intent on open and close, once each", () => {
  const sent: IntentParams[] = [];
  const t = new IntentTracker((p) => sent.push(p), new FakeTimers());
  t.chatOpened();
  t.chatOpened();
  t.chatClosed();
  t.chatClosed();
  assert.deepEqual(sent, [{ kind: "chat", active: true }, { kind: "chat", active: false }]);
});

test("a selection of five lines is announced after 300 ms of standing still, its clearing at once", () => {
  const sent: IntentParams[] = [];
  const timers = new FakeTimers();
  const t = new IntentTracker((p) => sent.push(p), timers);
  t.selectionChanged("file:///a.py", lines(0, 2)); // 3 lines: nothing
  timers.advance(400);
  assert.deepEqual(sent, []);
  // Dragging: each change restarts the wait.
  t.selectionChanged("file:///a.py", lines(0, 4));
  timers.advance(200);
  t.selectionChanged("file:///a.py", lines(0, 6));
  timers.advance(200);
  assert.deepEqual(sent, []);
  timers.advance(100);
  assert.deepEqual(sent, [{ kind: "selection", active: true, textDocument: { uri: "file:///a.py" }, range: lines(0, 6) }]);
  t.selectionChanged("file:///a.py", undefined);
  assert.deepEqual(sent.at(-1), { kind: "selection", active: false });
  assert.equal(sent.length, 2);
  // A small selection after a cleared one sends nothing more.
  t.selectionChanged("file:///a.py", lines(1, 2));
  timers.advance(400);
  assert.equal(sent.length, 2);
});

test("a large selection shrunk before the debounce sends nothing", () => {
  const sent: IntentParams[] = [];
  const timers = new FakeTimers();
  const t = new IntentTracker((p) => sent.push(p), timers);
  t.selectionChanged("file:///a.py", lines(0, 9));
  timers.advance(100);
  t.selectionChanged("file:///a.py", undefined);
  timers.advance(1000);
  assert.deepEqual(sent, []);
});
