-- Headless tests of the Neovim plugin against the real `triage serve` and the loopback test
-- model server (examples/test_backend):
--
--   nvim --headless -u NONE -i NONE --cmd 'set rtp+=editors/nvim' -c 'luafile editors/nvim/tests/run.lua'
--
-- Binaries: $TRIAGE_BIN and $TRIAGE_TEST_BACKEND, else $CARGO_TARGET_DIR/debug/… (default
-- target/). Exits 0 when every test passed, 1 otherwise (one line per test on stdout).

local uv = vim.loop
local results = { passed = 0, failed = 0 }

local function out(line)
  io.stdout:write(line .. '\n')
  io.stdout:flush()
end

local repo = vim.fn.fnamemodify(debug.getinfo(1, 'S').source:sub(2), ':p:h:h:h:h')
local target = os.getenv('CARGO_TARGET_DIR') or (repo .. '/target')
local TRIAGE_BIN = os.getenv('TRIAGE_BIN') or (target .. '/debug/triage')
local TEST_BACKEND = os.getenv('TRIAGE_TEST_BACKEND') or (target .. '/debug/examples/test_backend')

local FAST, CODER = 'llama3.2:3b', 'qwen3-coder:30b'

local function answer_for(model, tokens)
  local base = { 'Hello', ' from', ' ' .. model, ',', ' this', ' is', ' a', ' test', ' answer', '.' }
  local parts = {}
  for i = 1, tokens or 10 do
    parts[i] = base[(i - 1) % #base + 1]
  end
  return table.concat(parts)
end

local function fail(message)
  error(message, 2)
end

local function eq(actual, expected, what)
  if not vim.deep_equal(actual, expected) then
    fail(string.format('%s: expected %s, got %s', what or 'value', vim.inspect(expected), vim.inspect(actual)))
  end
end

local function truthy(value, what)
  if not value then
    fail(what or 'expected a truthy value')
  end
  return value
end

--- Waits (processing events) until `predicate` holds; every wait is bounded.
local function wait_for(predicate, ms, what)
  local ok = vim.wait(ms or 5000, predicate, 10)
  if not ok then
    fail('timed out waiting for ' .. (what or 'a condition'))
  end
end

-- ---------------------------------------------------------------------------------------
-- The test backend

local backend = {}

function backend.start()
  for _, path in ipairs({ TRIAGE_BIN, TEST_BACKEND }) do
    if vim.fn.executable(path) ~= 1 then
      out('missing ' .. path .. ': run `cargo build --bin triage --examples` or set TRIAGE_BIN / TRIAGE_TEST_BACKEND')
      vim.cmd('cquit 1')
    end
  end
  local url
  backend.job = vim.fn.jobstart({ TEST_BACKEND, '127.0.0.1:0' }, {
    on_stdout = function(_, data)
      for _, line in ipairs(data) do
        local found = line:match('^listening on (http://%S+)')
        if found then
          url = found
        end
      end
    end,
  })
  wait_for(function()
    return url ~= nil
  end, 15000, 'test_backend to listen')
  backend.url = url
  backend.host, backend.port = url:match('^http://([%d%.]+):(%d+)')
end

--- A small HTTP/1.1 client over luv, for the backend's /_test API.
function backend.call(method, path, body)
  local payload = body ~= nil and vim.fn.json_encode(body) or ''
  local request = table.concat({
    method .. ' ' .. path .. ' HTTP/1.1',
    'Host: ' .. backend.host .. ':' .. backend.port,
    'Content-Type: application/json',
    'Content-Length: ' .. #payload,
    'Connection: close',
    '',
    payload,
  }, '\r\n')
  local response, finished = {}, false
  local tcp = uv.new_tcp()
  tcp:connect(backend.host, tonumber(backend.port), function(err)
    if err then
      finished = err
      return
    end
    tcp:write(request)
    tcp:read_start(function(read_err, chunk)
      if read_err or not chunk then
        tcp:close()
        finished = read_err or true
      else
        table.insert(response, chunk)
      end
    end)
  end)
  wait_for(function()
    return finished
  end, 5000, method .. ' ' .. path)
  local text = table.concat(response)
  local status = tonumber(text:match('^HTTP/1%.1 (%d+)'))
  if status ~= 200 and status ~= 204 then
    fail(method .. ' ' .. path .. ' answered ' .. tostring(status) .. ': ' .. text)
  end
  local content = text:match('\r\n\r\n(.*)$') or ''
  if content == '' then
    return nil
  end
  return vim.fn.json_decode(content)
end

function backend.fault(model, fault)
  backend.call('POST', '/_test/fault', { model = model, fault = fault })
end

function backend.requests()
  return backend.call('GET', '/_test/requests')
end

function backend.chats()
  return vim.tbl_filter(function(r)
    return r.path == '/api/chat'
  end, backend.requests())
end

function backend.reset()
  for _, model in ipairs({ FAST, CODER, 'llama3.1:70b' }) do
    backend.fault(model, { kind = 'ok' })
  end
  backend.call('POST', '/_test/loaded', {})
end

-- ---------------------------------------------------------------------------------------
-- Setup: a config file pointing at the backend, as tests/lsp/conftest.py writes it.

local dir = vim.fn.tempname()
vim.fn.mkdir(dir, 'p')
local function write(path, text)
  local f = assert(io.open(path, 'w'))
  f:write(text)
  f:close()
end

local function open_file(name, lines)
  local path = dir .. '/' .. name
  write(path, table.concat(lines, '\n') .. '\n')
  vim.cmd('silent edit ' .. vim.fn.fnameescape(path))
  return vim.api.nvim_get_current_buf()
end

local triage
local M_messages = {}

local function client()
  return vim.lsp.get_client_by_id(triage._state.client_id)
end

local function answer_window()
  return triage._last_window
end

local tests = {}
local function test(name, fn)
  table.insert(tests, { name = name, fn = fn })
end

-- ---------------------------------------------------------------------------------------
-- The tests (in order: they share one server)

test('format: the statusline text, levels and UTF-16 columns (pure)', function()
  local format = require('triage.format')
  local tiers = { [CODER] = 'coder' }
  eq(format.status_text({ vram = { used_mb = 2300, total_mb = 32768 }, level = 'ok', loaded = {}, working = CODER }, tiers), 'VRAM 7% · coder')
  eq(format.status_text({ vram = vim.NIL, level = 'unknown', loaded = {}, working = vim.NIL }, tiers), 'no GPU · idle')
  eq(format.status_text({ vram = { used_mb = 1, total_mb = 2 }, level = 'ok', loaded = {}, working = 'mistral:7b' }, tiers), 'VRAM 50% · mistral:7b')
  eq(format.level_highlight('warn'), 'TriageWarn')
  eq(format.level_highlight('critical'), 'TriageCritical')
  eq(format.level_highlight('ok'), 'TriageOk')
  eq(format.footer({ model = CODER, tier = 'coder', confidence = 0.9137, timings = { first_token_ms = 412, total_ms = 3810 } }),
    'qwen3-coder:30b · coder · confidence 0.91 · first token 412 ms · total 3810 ms')
  local details = format.details({ model = CODER, tier = 'coder', confidence = 1, reasons = { 'a code action' }, fallbacks = {},
    context = { sources = { { path = 'src/route.rs', start_line = 10, end_line = 42, kind = 'symbol' } } } })
  truthy(vim.tbl_contains(details, '  src/route.rs:10–42 (symbol)'), 'sources listed: ' .. vim.inspect(details))
  truthy(vim.tbl_contains(details, '  - a code action'), 'reasons listed')
  -- 'é' is 2 bytes and 1 UTF-16 unit, '👋' 4 bytes and 2 units.
  local line = 'aé👋b'
  eq(format.column(line, 3, 'utf-16'), 2)
  eq(format.column(line, 7, 'utf-16'), 4)
  eq(format.column(line, 7, 'utf-8'), 7)
  eq(format.column(line, 7, 'utf-32'), 3)
end)

test('a missing binary: one clear message, nothing attached', function()
  local messages = {}
  local notify = vim.notify
  vim.notify = function(message, level)
    table.insert(messages, { message, level })
  end
  local ok, err = pcall(function()
    triage.setup({ server_path = dir .. '/no-such-triage' })
    open_file('missing.py', { 'x = 1' })
    open_file('missing2.py', { 'y = 2' })
  end)
  vim.notify = notify
  assert(ok, err)
  eq(#messages, 1, 'one notification')
  truthy(messages[1][1]:find('not found', 1, true) and messages[1][1]:find('cargo install', 1, true), messages[1][1])
  eq(messages[1][2], vim.log.levels.ERROR)
  eq(triage.statusline(), 'triage: no server')
  eq(triage._state.client_id, nil)
  vim.cmd('silent! %bwipeout!')
end)

test('setup attaches the server to buffers (vim.lsp.start or the 0.7 fallback)', function()
  triage.setup({ cmd = { TRIAGE_BIN, 'serve' }, settings = { tiers = { heavy = { model = 'llama3.3:70b' } } } })
  local buf = open_file('greet.py', { 'def greet(name):', '    return "héllo " + name  # 👋', '', 'print(greet("wörld"))' })
  wait_for(function()
    local c = triage._state.client_id and client()
    return c and c.initialized and vim.lsp.buf_is_attached(buf, c.id)
  end, 10000, 'the client to attach')
  if vim.lsp.start then
    eq(triage._state.attach_path, 'vim.lsp.start')
  else
    eq(triage._state.attach_path, 'start_client')
  end
  -- A second buffer shares the client.
  local before = triage._state.client_id
  local other = open_file('other.py', { 'x = 1' })
  wait_for(function()
    return vim.lsp.buf_is_attached(other, before)
  end, 5000, 'the second buffer to attach')
  eq(#(vim.lsp.get_clients or vim.lsp.get_active_clients)(), 1, 'one client')
end)

test('the statusline reflects triage/status notifications', function()
  wait_for(function()
    return triage.status() ~= nil
  end, 5000, 'the first triage/status')
  eq(triage.statusline(), 'no GPU · idle')
  truthy(triage.statusline_highlighted():find('%#TriageOk#', 1, true), triage.statusline_highlighted())
  backend.call('POST', '/_test/loaded', { { name = CODER, model = CODER, size = 19 * 1024 * 1024 * 1024,
    size_vram = 19 * 1024 * 1024 * 1024, expires_at = '2030-01-01T00:00:00Z' } })
  wait_for(function()
    local s = triage.status()
    return s and s.loaded[1] and s.loaded[1].name == CODER
  end, 5000, 'the loaded model in triage/status')
  eq(triage.status().loaded[1].size_mb, 19 * 1024)
  -- A cold load: the model is at work (and the spinner turns) until it answers.
  backend.fault(FAST, { kind = 'cold_load', ms = 1400 })
  local statuslines = {}
  vim.cmd('TriageAsk hello there')
  wait_for(function()
    table.insert(statuslines, triage.statusline())
    return triage.statusline():find('no GPU · fast', 1, true) ~= nil
  end, 4000, 'the statusline to show the fast model at work')
  truthy(triage.statusline():match('^%S+ no GPU · fast$'), 'a spinner frame before the text: ' .. triage.statusline())
  wait_for(function()
    return triage.statusline() == 'no GPU · idle'
  end, 5000, 'the statusline back to idle')
  eq(answer_window():answer(), answer_for(FAST))
  answer_window():close()
end)

test(':TriageExplain streams into its window and shows model, tier and confidence', function()
  backend.fault(CODER, { kind = 'trickle', ms = 30, tokens = 20 })
  vim.cmd('buffer greet.py')
  local before = #backend.chats()
  vim.cmd('1,2TriageExplain')
  local win = answer_window()
  truthy(vim.api.nvim_win_is_valid(win.win), 'the window is open')
  local partial = nil
  wait_for(function()
    local text = win:answer()
    if text ~= '' and text ~= answer_for(CODER, 20) and not partial then
      partial = text
    end
    return triage._state.current == nil and text == answer_for(CODER, 20)
  end, 5000, 'the whole answer')
  truthy(partial, 'the answer was shown while it streamed')
  truthy(vim.startswith(answer_for(CODER, 20), partial), 'a partial answer is a prefix of the whole')
  local lines = win:lines()
  eq(lines[1], '# triage: Explain')
  eq(lines[2], '> def greet(name):')
  local footer = vim.tbl_filter(function(l)
    return l:find('^── qwen3%-coder:30b · coder · confidence %d%.%d%d') ~= nil
  end, lines)
  eq(#footer, 1, 'footer line in ' .. vim.inspect(lines))
  local chats = backend.chats()
  eq(#chats, before + 1)
  truthy(chats[#chats].text:find('def greet(name):\n    return "héllo " + name  # 👋', 1, true), 'the selection reached the model')
  win:close()
end)

test(':TriageExplainShell explains the current line without running it', function()
  local buf = open_file('run.sh', { '#!/bin/sh', 'rm -rf ./build/ 🧹' })
  wait_for(function()
    return vim.lsp.buf_is_attached(buf, triage._state.client_id)
  end, 5000, 'attach')
  vim.api.nvim_win_set_cursor(0, { 2, 0 })
  vim.cmd('TriageExplainShell')
  wait_for(function()
    return triage._state.current == nil and answer_window():answer() ~= ''
  end, 5000, 'the explanation')
  local chats = backend.chats()
  truthy(chats[#chats].text:find('rm -rf ./build/ 🧹', 1, true), 'the command reached the model')
  answer_window():close()
end)

test(':TriageFix changes the buffer as one edit, and one undo restores it', function()
  local original = { 'def add(a, b):', '    return a - b', '', 'print(add(1, 2))' }
  local buf = open_file('add.py', original)
  wait_for(function()
    return vim.lsp.buf_is_attached(buf, triage._state.client_id)
  end, 5000, 'attach')
  local seq = vim.fn.undotree().seq_last
  local done = false
  triage.edit('fix', { range = 2, line1 = 1, line2 = 2 }, function(err)
    done = err or true
  end)
  wait_for(function()
    return done
  end, 5000, 'the fix')
  eq(done, true, 'no error')
  local fixed = answer_for(triage.last_decision().model)
  -- Lines 1-2 and their line breaks were the range (0:0 to 2:0).
  eq(vim.api.nvim_buf_get_lines(buf, 0, -1, false), { fixed, 'print(add(1, 2))' }, 'lines 1-2 replaced')
  eq(vim.fn.undotree().seq_last, seq + 1, 'one undo step')
  vim.cmd('silent undo')
  eq(vim.api.nvim_buf_get_lines(buf, 0, -1, false), original, 'undo restores the buffer')
  -- The command form works the same way.
  vim.cmd('3,4TriageTests')
  wait_for(function()
    return #vim.api.nvim_buf_get_lines(buf, 0, -1, false) > #original
  end, 5000, 'the tests inserted')
  eq(vim.api.nvim_buf_get_lines(buf, 0, 4, false), original, 'tests go after the selection')
end)

test('code actions from vim.lsp.buf.code_action(): Explain streams into the window, Fix edits', function()
  local buf = open_file('codeaction.py', { 'def half(x):', '    return x / 2' })
  wait_for(function()
    return vim.lsp.buf_is_attached(buf, triage._state.client_id)
  end, 5000, 'attach')
  local select = vim.ui.select
  local offered
  local function pick(title)
    vim.ui.select = function(items, opts, on_choice)
      offered = vim.tbl_map(function(item)
        return (opts.format_item or tostring)(item)
      end, items)
      for i, item in ipairs(items) do
        if opts.format_item(item):find(title, 1, true) then
          return on_choice(item, i)
        end
      end
      on_choice(nil, nil)
    end
  end
  local ok, err = pcall(function()
    vim.api.nvim_win_set_cursor(0, { 2, 0 })
    local previous = answer_window()
    pick('triage: Explain')
    vim.lsp.buf.code_action()
    wait_for(function()
      return answer_window() ~= previous and triage._state.current == nil and answer_window():answer() ~= ''
    end, 5000, 'the explanation from the code action')
    eq(answer_window():answer(), answer_for(CODER))
    truthy(vim.tbl_contains(offered, 'triage: Fix'), vim.inspect(offered))
    answer_window():close()
    vim.cmd('buffer codeaction.py')
    vim.api.nvim_win_set_cursor(0, { 2, 0 })
    pick('triage: Fix')
    vim.lsp.buf.code_action()
    wait_for(function()
      return vim.api.nvim_buf_get_lines(buf, 1, 2, false)[1] == answer_for(CODER)
    end, 5000, 'the fix applied to line 2')
    eq(vim.api.nvim_buf_get_lines(buf, 0, 1, false)[1], 'def half(x):')
  end)
  vim.ui.select = select
  assert(ok, err)
end)

test('cancel: the key in the answer window stops the backend stream', function()
  backend.fault(FAST, { kind = 'trickle', ms = 200, tokens = 200 })
  local before = #backend.requests()
  vim.cmd('TriageAsk hello')
  local win = answer_window()
  wait_for(function()
    return win:answer() ~= ''
  end, 5000, 'the first delta')
  vim.api.nvim_set_current_win(win.win)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes('<C-c>', true, false, true), 'x', false)
  wait_for(function()
    local requests = backend.requests()
    local r = requests[before + 1]
    return r and r.closed_early
  end, 3000, 'the backend to see the connection closed')
  local r = backend.requests()[before + 1]
  eq(r.model, FAST)
  eq(r.completed, false)
  local shown = win:answer()
  vim.wait(600)
  truthy(#win:answer() <= #shown + #' from' + 20, 'no more text after cancel')
  truthy(vim.tbl_contains(win:lines(), '── stopped: the model stream was closed'), 'the window says it stopped')
  eq(triage._state.busy, 0, 'nothing counted as running')
  win:close()
  backend.fault(FAST, { kind = 'ok' })
end)

test(':TriageRoute shows the decision and calls no model', function()
  local before = #backend.chats()
  vim.cmd('TriageRoute ps aux | grep -v grep | grep -i nginx')
  wait_for(function()
    return answer_window() and answer_window():lines()[3] ~= nil and answer_window():lines()[1] == '# triage: Route (no model called)'
  end, 5000, 'the route window')
  local lines = answer_window():lines()
  truthy(lines[3]:find('^coder → qwen3%-coder:30b on ollama'), vim.inspect(lines))
  truthy(vim.tbl_contains(lines, '  - the prompt is a shell command'), vim.inspect(lines))
  eq(#backend.chats(), before, 'no model called')
  answer_window():close()
end)

test(':TriageStatus shows endpoints, tiers (with the setup settings) and per-model latency', function()
  vim.cmd('TriageStatus')
  wait_for(function()
    return answer_window() and answer_window():lines()[1] == '# triage: Status'
  end, 5000, 'the status window')
  local text = table.concat(answer_window():lines(), '\n')
  truthy(text:find('ollama (ollama, ' .. backend.url, 1, true), text)
  truthy(text:find('reachable', 1, true), text)
  truthy(text:find('heavy  llama3.3:70b', 1, true), 'initializationOptions took effect: ' .. text)
  truthy(text:find(FAST .. ' · %d+ requests, 0 errors · first token p50'), text)
  answer_window():close()
end)

test('selection intent: five lines selected for 300 ms, then cleared', function()
  local sent = {}
  local c = client()
  local original = c.notify
  -- Only selection intents: closing an answer window sends a chat intent.
  c.notify = function(...)
    local args = { ... }
    local method, params
    if type(args[1]) == 'table' then
      method, params = args[2], args[3]
    else
      method, params = args[1], args[2]
    end
    if method == 'triage/intent' and params.kind == 'selection' then
      table.insert(sent, params)
    end
    return original(...)
  end
  vim.cmd('buffer add.py')
  vim.api.nvim_feedkeys('ggV4j', 'x', false)
  eq(vim.api.nvim_get_mode().mode, 'V')
  -- Keys fed from a script move the cursor without the main loop's CursorMoved; fire it as
  -- the loop would after `4j`.
  vim.api.nvim_exec_autocmds('CursorMoved', {})
  vim.wait(150)
  eq(sent, {}, 'nothing before 300 ms')
  vim.wait(300)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes('<Esc>', true, false, true), 'x', false)
  vim.wait(50)
  c.notify = original
  eq(#sent, 2, 'two intents: ' .. vim.inspect(sent))
  eq(sent[1].kind, 'selection')
  eq(sent[1].active, true)
  eq(sent[1].range.start.line, 0)
  eq(sent[2], { kind = 'selection', active = false })
end)

test('a command right after the file opened waits for the server to start', function()
  local old = client()
  if vim.fn.has('nvim-0.11') == 1 then old:stop() else old.stop() end
  wait_for(function()
    return triage._state.client_id == nil
  end, 5000, 'the old client to stop')
  local buf = open_file('fresh.py', { 'def fresh():', '    return 42' })
  -- No waiting: the server is still starting when the command is sent.
  truthy(not client().initialized, string.format('the new client is still initializing (id %s, old %s)', client().id, old.id))
  vim.cmd('1,2TriageExplain')
  wait_for(function()
    return triage._state.current == nil and answer_window():answer() ~= ''
  end, 10000, 'the answer')
  eq(answer_window():answer(), answer_for(CODER))
  truthy(vim.lsp.buf_is_attached(buf, triage._state.client_id), 'attached')
  answer_window():close()
end)

test(':checkhealth triage: binary, server start, endpoints, GPU', function()
  vim.cmd('checkhealth triage')
  local text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n')
  for _, expected in ipairs({ 'binary found: ', 'server starts and answers initialize', 'endpoint ollama (ollama, ' .. backend.url, 'no GPU seen' }) do
    truthy(text:find(expected, 1, true), 'checkhealth says "' .. expected .. '":\n' .. text)
  end
  truthy(not text:find('ERROR', 1, true), 'no error in:\n' .. text)
end)

-- ---------------------------------------------------------------------------------------

local function main()
  backend.start()
  write(dir .. '/config.toml', string.format('[endpoints.ollama]\nurl = "%s"\n\n', backend.url)
    .. table.concat(vim.tbl_map(function(t)
      return string.format('[tiers.%s.timeouts]\nfirst_token_s = 1.5\nidle_s = 1\ntotal_s = 20\n\n', t)
    end, { 'fast', 'coder', 'heavy' })))
  vim.env.TRIAGE_CONFIG = dir .. '/config.toml'
  vim.env.TRIAGE_STATE_DIR = dir .. '/state'
  vim.env.XDG_CONFIG_HOME = dir .. '/xdg'
  vim.env.OLLAMA_HOST = nil
  vim.env.RUST_LOG = nil
  vim.o.columns, vim.o.lines = 160, 50
  -- The plugin's messages are kept, not printed between the test lines.
  vim.notify = function(message, level)
    table.insert(M_messages, { message, level })
  end
  triage = require('triage')
  local version = vim.version()
  out(string.format('# Neovim %d.%d.%d, %s', version.major, version.minor, version.patch,
    vim.lsp.start and 'vim.lsp.start' or 'no vim.lsp.start: start_client + buf_attach_client'))
  for _, t in ipairs(tests) do
    local ok, err = pcall(t.fn)
    if ok then
      results.passed = results.passed + 1
      out('ok - ' .. t.name)
    else
      results.failed = results.failed + 1
      out('not ok - ' .. t.name .. '\n    ' .. tostring(err):gsub('\n', '\n    '))
    end
    pcall(backend.reset)
  end
  out(string.format('# %d passed, %d failed', results.passed, results.failed))
end

local ok, err = pcall(main)
if not ok then
  out('not ok - harness: ' .. tostring(err))
  results.failed = results.failed + 1
end
-- Stop the server cleanly, then the backend (it serves until its stdin closes).
local c = triage and triage._state.client_id and vim.lsp.get_client_by_id(triage._state.client_id)
if c then
  if vim.fn.has('nvim-0.11') == 1 then c:stop() else c.stop() end
  vim.wait(3000, function()
    return vim.lsp.get_client_by_id(c.id) == nil
  end, 20)
end
if backend.job then
  vim.fn.jobstop(backend.job)
end
vim.fn.delete(dir, 'rf')
vim.cmd(results.failed == 0 and 'qall!' or 'cquit 1')
