// The extension's settings (`triage.*` in package.json, camelCase) → the server's
// configuration schema (the TOML file's, snake_case), sent as initializationOptions and with
// every change. Only settings the user set are sent: an unset one (null) leaves the config
// file's or the built-in value in force. Pure; the extension passes a getter over
// `workspace.getConfiguration("triage")`.

export type SettingGetter = (key: string) => unknown;

const TIERS = ["fast", "coder", "heavy"] as const;

/** camelCase setting suffix → snake_case server key, per section. */
const TIER_KEYS: [string, string][] = [
  ["model", "model"],
  ["endpoint", "endpoint"],
  ["vramMb", "vram_mb"],
  ["enabled", "enabled"],
];
const TIMEOUT_KEYS: [string, string][] = [
  ["connectS", "connect_s"],
  ["firstTokenS", "first_token_s"],
  ["idleS", "idle_s"],
  ["totalS", "total_s"],
];
const VRAM_KEYS: [string, string][] = [
  ["headroomMb", "headroom_mb"],
  ["warnPercent", "warn_percent"],
  ["criticalPercent", "critical_percent"],
];
const COMPLETION_KEYS: [string, string][] = [
  ["enabled", "enabled"],
  ["tier", "tier"],
  ["maxTokens", "max_tokens"],
];
const ENDPOINT_KEYS: Record<string, string> = { kind: "kind", url: "url", apiKeyEnv: "api_key_env", api_key_env: "api_key_env" };

function isSet(value: unknown): boolean {
  return value !== null && value !== undefined && value !== "";
}

function section(get: SettingGetter, prefix: string, keys: [string, string][]): Record<string, unknown> | undefined {
  const out: Record<string, unknown> = {};
  for (const [from, to] of keys) {
    const value = get(`${prefix}${from}`);
    if (isSet(value)) out[to] = value;
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

/** Endpoints keep their names; their keys are mapped, unknown keys passed on as they are
 * (the server refuses them with a message naming the key, which is what the user needs). */
function endpoints(value: unknown): Record<string, unknown> | undefined {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const out: Record<string, unknown> = {};
  for (const [name, raw] of Object.entries(value as Record<string, unknown>)) {
    if (typeof raw !== "object" || raw === null) {
      out[name] = raw;
      continue;
    }
    const mapped: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
      if (isSet(v)) mapped[ENDPOINT_KEYS[k] ?? k] = v;
    }
    out[name] = mapped;
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

/** The server configuration the settings describe; `{}` when nothing is set. */
export function toServerSettings(get: SettingGetter): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const eps = endpoints(get("endpoints"));
  if (eps) out.endpoints = eps;
  const tiers: Record<string, unknown> = {};
  for (const tier of TIERS) {
    const t = section(get, `tiers.${tier}.`, TIER_KEYS) ?? {};
    const timeouts = section(get, `tiers.${tier}.timeouts.`, TIMEOUT_KEYS);
    if (timeouts) t.timeouts = timeouts;
    if (Object.keys(t).length > 0) tiers[tier] = t;
  }
  if (Object.keys(tiers).length > 0) out.tiers = tiers;
  const vram = section(get, "vram.", VRAM_KEYS);
  if (vram) out.vram = vram;
  const completion = section(get, "completion.", COMPLETION_KEYS);
  if (completion) out.completion = completion;
  return out;
}

/** Whether a settings change concerns the server (and not only how it is started). */
export function affectsServer(affects: (section: string) => boolean): boolean {
  return ["triage.endpoints", "triage.tiers", "triage.vram", "triage.completion"].some(affects);
}

/** Whether a change needs the server restarted (a different binary or arguments). */
export function needsRestart(affects: (section: string) => boolean): boolean {
  return affects("triage.serverPath") || affects("triage.serverArgs");
}
