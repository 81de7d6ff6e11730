import assert from "node:assert/strict";
import { test } from "node:test";

import { affectsServer, needsRestart, toServerSettings } from "../../src/settings";

function getter(values: Record<string, unknown>) {
  // As workspace.getConfiguration("triage").get: unset settings have their default, null.
  return (key: string) => (key in values ? values[key] : null);
}

test("nothing set: nothing sent, the config file rules", () => {
  assert.deepEqual(toServerSettings(getter({})), {});
  assert.deepEqual(toServerSettings(getter({ "tiers.fast.model": "", serverPath: "/x" })), {});
});

test("settings map to the server's schema, snake_case, only what is set", () => {
  const settings = toServerSettings(
    getter({
      endpoints: { "gpu-box": { url: "http://gpu-box.lan:11434" }, vllm: { kind: "openai", url: "http://vllm.lan:8000/v1", apiKeyEnv: "VLLM_API_KEY" } },
      "tiers.coder.model": "qwen2.5-coder:14b",
      "tiers.coder.endpoint": ["ollama", "gpu-box"],
      "tiers.coder.vramMb": 9000,
      "tiers.heavy.enabled": false,
      "tiers.heavy.timeouts.firstTokenS": 180,
      "tiers.heavy.timeouts.idleS": 30,
      "vram.headroomMb": 2048,
      "vram.warnPercent": 80,
      "completion.tier": "coder",
    }),
  );
  assert.deepEqual(settings, {
    endpoints: { "gpu-box": { url: "http://gpu-box.lan:11434" }, vllm: { kind: "openai", url: "http://vllm.lan:8000/v1", api_key_env: "VLLM_API_KEY" } },
    tiers: {
      coder: { model: "qwen2.5-coder:14b", endpoint: ["ollama", "gpu-box"], vram_mb: 9000 },
      heavy: { enabled: false, timeouts: { first_token_s: 180, idle_s: 30 } },
    },
    vram: { headroom_mb: 2048, warn_percent: 80 },
    completion: { tier: "coder" },
  });
});

test("false and 0 are values, not unset", () => {
  assert.deepEqual(toServerSettings(getter({ "completion.enabled": false, "vram.headroomMb": 0 })), {
    vram: { headroom_mb: 0 },
    completion: { enabled: false },
  });
});

test("which changes go to the server and which restart it", () => {
  const affects = (changed: string[]) => (section: string) => changed.some((c) => c === section || c.startsWith(`${section}.`));
  assert.equal(affectsServer(affects(["triage.tiers.fast.model"])), true);
  assert.equal(affectsServer(affects(["triage.serverPath"])), false);
  assert.equal(needsRestart(affects(["triage.serverArgs"])), true);
  assert.equal(needsRestart(affects(["triage.vram.warnPercent"])), false);
  assert.equal(affectsServer(affects(["editor.fontSize"])), false);
});
