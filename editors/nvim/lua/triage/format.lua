--- Text the plugin shows, built from what the server sends: the statusline component
--- ("VRAM 7% · coder"), the answer footer, the status report and a routing decision. Pure
--- functions (no editor state), the same wording as the VS Code extension.
local M = {}

--- Used VRAM in percent, or nil without a GPU.
function M.vram_percent(status)
  local vram = status and status.vram
  if type(vram) ~= 'table' or type(vram.total_mb) ~= 'number' or vram.total_mb <= 0 then
    return nil
  end
  return math.floor(100 * (vram.used_mb or 0) / vram.total_mb + 0.5)
end

--- "VRAM 7% · coder", "no GPU · idle"; `tiers` maps model → tier name.
function M.status_text(status, tiers)
  if type(status) ~= 'table' then
    return 'triage'
  end
  local percent = M.vram_percent(status)
  local vram = percent and ('VRAM ' .. percent .. '%') or 'no GPU'
  local working = status.working
  local at_work = 'idle'
  if type(working) == 'string' and working ~= '' then
    at_work = (tiers and tiers[working]) or working
  end
  return vram .. ' · ' .. at_work
end

--- The highlight group for a level: warn and critical stand out.
function M.level_highlight(level)
  if level == 'critical' then
    return 'TriageCritical'
  elseif level == 'warn' then
    return 'TriageWarn'
  end
  return 'TriageOk'
end

local function ms(value)
  if type(value) ~= 'number' then
    return nil
  end
  if value >= 10000 then
    return string.format('%.1f s', value / 1000)
  end
  return string.format('%d ms', math.floor(value + 0.5))
end

local function mb(value)
  if type(value) ~= 'number' then
    return '–'
  end
  if value >= 1024 then
    return string.format('%.1f GB', value / 1024)
  end
  return string.format('%d MB', value)
end

--- "qwen3-coder:30b · coder · confidence 0.91 · first token 412 ms · total 3810 ms"
function M.footer(answer)
  local parts = { answer.model or '?', answer.tier or '?', string.format('confidence %.2f', answer.confidence or 0) }
  local timings = type(answer.timings) == 'table' and answer.timings or {}
  local first = ms(timings.first_token_ms)
  if first then
    table.insert(parts, 'first token ' .. first)
  end
  local total = ms(timings.total_ms)
  if total then
    table.insert(parts, 'total ' .. total)
  end
  if answer.finish == 'length' then
    table.insert(parts, 'cut at the token limit')
  end
  return table.concat(parts, ' · ')
end

--- Lines under an answer: footer, warning, fallbacks, sources (issue 9's `context.sources`),
--- reasons.
function M.details(answer)
  local lines = { '', '── ' .. M.footer(answer) }
  if type(answer.warning) == 'string' and answer.warning ~= '' then
    table.insert(lines, '⚠ ' .. answer.warning)
  end
  if type(answer.notApplied) == 'string' then
    table.insert(lines, 'Not applied: ' .. answer.notApplied)
  end
  for _, f in ipairs(type(answer.fallbacks) == 'table' and answer.fallbacks or {}) do
    table.insert(lines, string.format('fell back after %s (%s) on %s: %s', f.model, f.tier, f.endpoint, f.error))
  end
  local sources = type(answer.context) == 'table' and answer.context.sources
  if type(sources) == 'table' and #sources > 0 then
    table.insert(lines, 'Sources:')
    for _, s in ipairs(sources) do
      if type(s) == 'table' and type(s.path) == 'string' then
        local span = s.start_line == s.end_line and tostring(s.start_line)
          or string.format('%s–%s', s.start_line, s.end_line)
        table.insert(lines, string.format('  %s:%s%s', s.path, span, s.kind and (' (' .. s.kind .. ')') or ''))
      end
    end
  end
  if type(answer.reasons) == 'table' and #answer.reasons > 0 then
    table.insert(lines, 'Why this model:')
    for _, r in ipairs(answer.reasons) do
      table.insert(lines, '  - ' .. r)
    end
  end
  return lines
end

--- A `triage/route` decision as lines.
function M.decision(decision)
  local lines = {
    string.format('%s → %s on %s%s', decision.tier, decision.model, decision.endpoint,
      decision.url and (' (' .. decision.url .. ')') or ''),
    string.format('confidence %.2f', decision.confidence or 0),
  }
  if type(decision.reasons) == 'table' and #decision.reasons > 0 then
    table.insert(lines, 'reasons:')
    for _, r in ipairs(decision.reasons) do
      table.insert(lines, '  - ' .. r)
    end
  end
  if type(decision.fallbacks) == 'table' and #decision.fallbacks > 0 then
    local chain = {}
    for _, f in ipairs(decision.fallbacks) do
      table.insert(chain, string.format('%s (%s on %s)', f.tier, f.model, f.endpoint))
    end
    table.insert(lines, 'fallbacks: ' .. table.concat(chain, ' → '))
  end
  if type(decision.warning) == 'string' and decision.warning ~= '' then
    table.insert(lines, 'warning: ' .. decision.warning)
  end
  return lines
end

--- The `triage/status` answer as lines: endpoints, GPU, tiers, per-model latency.
function M.report(report, last)
  local lines = { 'endpoints:' }
  for _, e in ipairs(report.endpoints or {}) do
    if e.reachable then
      table.insert(lines, string.format('  %s (%s, %s) reachable%s · %d models, %d loaded', e.name, e.kind, e.url,
        e.version and (', ' .. e.version) or '', #(e.models or {}), #(e.loaded or {})))
    else
      table.insert(lines, string.format('  %s (%s, %s) UNREACHABLE: %s', e.name, e.kind, e.url, e.error or '?'))
    end
    for _, l in ipairs(e.loaded or {}) do
      table.insert(lines, string.format('    loaded %s · %s, %d%% in VRAM', l.name, mb(l.size_mb), l.vram_percent or 100))
    end
  end
  local gpu = report.gpu or {}
  table.insert(lines, 'gpu:')
  if gpu.seen then
    table.insert(lines, string.format('  %s used of %s, %s free · level %s', mb(gpu.used_mb), mb(gpu.total_mb),
      mb(gpu.free_mb), gpu.level))
    for _, d in ipairs(gpu.devices or {}) do
      table.insert(lines, string.format('  [%d] %s: %s / %s used', d.index or 0, d.name or 'GPU', mb(d.used_mb), mb(d.total_mb)))
    end
  else
    table.insert(lines, '  no GPU seen: routing by analysis alone')
  end
  for _, n in ipairs(gpu.notes or {}) do
    table.insert(lines, '  note: ' .. n)
  end
  table.insert(lines, 'tiers:')
  for _, t in ipairs(report.tiers or {}) do
    local state = t.loaded and 'loaded' or (t.present == false and 'MISSING' or (t.present and 'present' or '?'))
    table.insert(lines, string.format('  %-6s %s on %s · ~%s · %s%s', t.tier, t.model, table.concat(t.endpoints or {}, ', '),
      mb(t.vram_mb), state, t.enabled == false and ' · off' or ''))
  end
  table.insert(lines, 'models:')
  if #(report.stats or {}) == 0 then
    table.insert(lines, '  no requests answered yet')
  end
  for _, s in ipairs(report.stats or {}) do
    table.insert(lines, string.format('  %s · %d requests, %d errors · first token p50 %s / p95 %s · %s tok/s%s', s.model,
      s.requests or 0, s.errors or 0, ms(s.first_token_p50_ms) or '–', ms(s.first_token_p95_ms) or '–',
      type(s.tokens_per_s) == 'number' and string.format('%.1f', s.tokens_per_s) or '–',
      s.last_error and (' · last error: ' .. s.last_error) or ''))
  end
  if last then
    table.insert(lines, 'last decision:')
    table.insert(lines, string.format('  %s (%s) · confidence %.2f', last.model, last.tier, last.confidence or 0))
    for _, r in ipairs(last.reasons or {}) do
      table.insert(lines, '    - ' .. r)
    end
  end
  return lines
end

--- The UTF-16 length of the first `byte_col` bytes of `line` (LSP's default position unit),
--- without vim.str_utfindex (whose signature changed across Neovim versions).
function M.utf16_units(line, byte_col)
  local units = 0
  local limit = math.min(byte_col, #line)
  for i = 1, limit do
    local b = line:byte(i)
    if b < 0x80 or (b >= 0xC0 and b < 0xF0) then
      units = units + 1
    elseif b >= 0xF0 then
      units = units + 2
    end
  end
  return units
end

--- A byte column as the negotiated encoding counts it.
function M.column(line, byte_col, encoding)
  if encoding == 'utf-8' then
    return math.min(byte_col, #line)
  elseif encoding == 'utf-32' then
    local count = 0
    for i = 1, math.min(byte_col, #line) do
      local b = line:byte(i)
      if b < 0x80 or b >= 0xC0 then
        count = count + 1
      end
    end
    return count
  end
  return M.utf16_units(line, byte_col)
end

return M
