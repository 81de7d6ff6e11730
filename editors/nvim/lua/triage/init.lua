--- triage for Neovim: starts `triage serve`, attaches it to buffers (vim.lsp.start where it
--- exists, vim.lsp.start_client + buf_attach_client on 0.7), and draws the UI: the answer
--- window, the statusline component, the commands. Every decision is the server's.
local format = require('triage.format')
local window = require('triage.window')

local M = {}

local defaults = {
  -- The server command; `server_path` and `args` build it when `cmd` is not given.
  cmd = nil,
  server_path = 'triage',
  args = {},
  cmd_env = nil,
  -- The server's configuration (the TOML file's schema), sent as initializationOptions.
  settings = {},
  -- nil: every normal buffer; else a list of filetypes.
  filetypes = nil,
  root_dir = nil,
  window = { width = 0.45, height = 0.6, border = 'rounded', enter = true },
  keymaps = { cancel = '<C-c>', close = 'q' },
  -- Send `triage/intent` so the server can warm the likely model.
  intent = true,
}

local state = {
  config = nil,
  client_id = nil,
  status = nil,
  tiers = {},
  last = nil,
  streams = {},
  busy = 0,
  current = nil,
  attach_path = nil,
  missing = false,
  next_token = 1,
  selection_intent = false,
  chat_intent = false,
}
M._state = state

local ACTIONS = {
  explain = 'Explain',
  explainShell = 'Explain shell command',
  fix = 'Fix',
  refactor = 'Refactor',
  docstring = 'Add docstring',
  tests = 'Write tests',
  ask = 'Ask the heavy model',
}

local REQUEST_CANCELLED = -32800

local function notify(message, level)
  vim.notify('triage: ' .. message, level or vim.log.levels.INFO)
end

--- Calls a client method on every Neovim version (0.11 made them methods: client:request).
local function call(client, name, ...)
  if vim.fn.has('nvim-0.11') == 1 then
    return client[name](client, ...)
  end
  return client[name](...)
end

local function get_client()
  return state.client_id and vim.lsp.get_client_by_id(state.client_id) or nil
end

local function redraw()
  vim.schedule(function()
    pcall(vim.cmd, 'redrawstatus!')
    pcall(vim.api.nvim_exec_autocmds, 'User', { pattern = 'TriageStatus', modeline = false })
  end)
end

local spinner_timer = nil
local function update_spinner()
  local busy = state.busy > 0 or (state.status and type(state.status.working) == 'string')
  if busy and not spinner_timer then
    spinner_timer = vim.loop.new_timer()
    spinner_timer:start(100, 100, vim.schedule_wrap(function()
      pcall(vim.cmd, 'redrawstatus')
    end))
  elseif not busy and spinner_timer then
    spinner_timer:stop()
    spinner_timer:close()
    spinner_timer = nil
  end
end

local function set_busy(delta)
  state.busy = math.max(0, state.busy + delta)
  update_spinner()
  redraw()
end

-- ---------------------------------------------------------------------------------------
-- Handlers

local function on_progress(err, result, ctx, config)
  local token = type(result) == 'table' and result.token or nil
  local stream = token ~= nil and state.streams[token] or nil
  if stream then
    local value = result.value
    if type(value) == 'table' and type(value.delta) == 'string' then
      stream(value.delta)
    end
    return
  end
  local default = vim.lsp.handlers['$/progress']
  if default then
    return default(err, result, ctx, config)
  end
end

local function on_status(_, result)
  if type(result) == 'table' and type(result.level) == 'string' then
    state.status = result
    update_spinner()
    redraw()
  end
end

local function refresh_tiers(client)
  call(client, 'request', 'triage/status', nil, function(err, result)
    if not err and type(result) == 'table' then
      local tiers = {}
      for _, t in ipairs(result.tiers or {}) do
        tiers[t.model] = t.tier
      end
      state.tiers = tiers
      redraw()
    end
  end)
end

local function settings_value(settings)
  if type(settings) ~= 'table' or next(settings) == nil then
    return vim.empty_dict()
  end
  return settings
end

local run_code_action

local function client_config()
  local c = state.config
  local commands = {}
  for action in pairs(ACTIONS) do
    -- A code action picked from vim.lsp.buf.code_action() runs here instead of a bare
    -- executeCommand whose answer would go nowhere: explanations stream into the window,
    -- edits report their result.
    commands['triage.' .. action] = function(command, ctx)
      run_code_action(action, command, ctx)
    end
  end
  return {
    commands = commands,
    name = 'triage',
    cmd = c.cmd,
    cmd_env = c.cmd_env,
    root_dir = c.root_dir,
    init_options = settings_value(c.settings),
    handlers = {
      ['$/progress'] = on_progress,
      ['triage/status'] = on_status,
    },
    on_init = function(client)
      refresh_tiers(client)
    end,
    on_exit = function()
      state.client_id = nil
      state.status = nil
      state.busy = 0
      update_spinner()
      redraw()
    end,
  }
end

-- ---------------------------------------------------------------------------------------
-- Attaching

local function wanted(bufnr)
  if not vim.api.nvim_buf_is_valid(bufnr) or vim.api.nvim_buf_get_option(bufnr, 'buftype') ~= '' then
    return false
  end
  local filetypes = state.config.filetypes
  if filetypes == nil then
    return true
  end
  return vim.tbl_contains(filetypes, vim.api.nvim_buf_get_option(bufnr, 'filetype'))
end

local function report_missing()
  if state.missing then
    return
  end
  state.missing = true
  notify(string.format(
    'the `%s` binary was not found. Install it with `cargo install --path .` in a clone of triage, or pass '
      .. "require('triage').setup({ server_path = '/path/to/triage' }). See :checkhealth triage.",
    state.config.cmd[1]), vim.log.levels.ERROR)
  redraw()
end

--- Attaches the server to a buffer, starting it on first use.
function M.attach(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  if not state.config or not wanted(bufnr) then
    return nil
  end
  if vim.fn.executable(state.config.cmd[1]) ~= 1 then
    report_missing()
    return nil
  end
  if vim.lsp.start then
    state.attach_path = 'vim.lsp.start'
    local id = vim.lsp.start(client_config(), {
      bufnr = bufnr,
      -- One server for every buffer, but never one that is shutting down (it can still be
      -- listed while it exits).
      reuse_client = function(client, config)
        return client.name == config.name and not call(client, 'is_stopped')
      end,
    })
    state.client_id = id or state.client_id
  else
    -- Neovim 0.7: no vim.lsp.start.
    state.attach_path = 'start_client'
    if not get_client() then
      state.client_id = vim.lsp.start_client(client_config())
    end
    if state.client_id then
      vim.lsp.buf_attach_client(bufnr, state.client_id)
    end
  end
  return state.client_id
end

-- ---------------------------------------------------------------------------------------
-- Requests

--- Sends a request; `on_done(err, result)` runs once: with the answer, the error, or
--- RequestCancelled after `handle.cancel()`.
local function request(method, params, on_done, bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  if not get_client() then
    M.attach(bufnr)
  end
  local client = get_client()
  if not client then
    if state.missing then
      report_missing()
    else
      notify('the language server is not running (see :checkhealth triage)', vim.log.levels.ERROR)
    end
    return nil
  end
  local finished = false
  local handle = {}
  set_busy(1)
  local function finish(err, result)
    if finished then
      return
    end
    finished = true
    set_busy(-1)
    on_done(err, result)
  end
  local function send()
    if finished then
      return
    end
    local ok, id = call(client, 'request', method, params, function(err, result)
      finish(err, result)
    end, bufnr)
    if not ok then
      finish({ code = -32603, message = 'the request could not be sent (the server has stopped)' }, nil)
      return
    end
    handle.id = id
  end
  -- A command run right after the file opened: wait for `initialize` (the buffers' didOpen go
  -- out with `initialized`), or the server would not know the document yet.
  local waited = 0
  local function when_ready()
    if finished then
      return
    elseif client.initialized then
      send()
    elseif waited >= 10000 or call(client, 'is_stopped') then
      finish({ code = -32002, message = 'the language server did not finish starting (see :checkhealth triage)' }, nil)
    else
      waited = waited + 20
      vim.defer_fn(when_ready, 20)
    end
  end
  when_ready()
  handle.cancel = function()
    if finished then
      return
    end
    if handle.id then
      call(client, 'cancel_request', handle.id)
    end
    finish({ code = REQUEST_CANCELLED, message = 'cancelled' }, nil)
  end
  return handle
end

local function line_text(bufnr, row)
  return vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
end

local function char_bytes(line, byte_index)
  local b = line:byte(byte_index)
  if not b then
    return 0
  elseif b < 0x80 then
    return 1
  elseif b < 0xE0 then
    return 2
  elseif b < 0xF0 then
    return 3
  end
  return 4
end

--- The LSP range a command works on: the charwise visual selection, the lines of a range,
--- or (no range) the current line — an empty range, which the server takes as the line.
function M.command_range(bufnr, opts)
  local client = get_client()
  local encoding = client and client.offset_encoding or 'utf-16'
  if not opts or (opts.range or 0) == 0 then
    local row = vim.api.nvim_win_get_cursor(0)[1] - 1
    return { start = { line = row, character = 0 }, ['end'] = { line = row, character = 0 } }
  end
  local l1, l2 = opts.line1, opts.line2
  local s = vim.api.nvim_buf_get_mark(bufnr, '<')
  local e = vim.api.nvim_buf_get_mark(bufnr, '>')
  if vim.fn.visualmode() == 'v' and s[1] == l1 and e[1] == l2 then
    local first, last = line_text(bufnr, l1 - 1), line_text(bufnr, l2 - 1)
    local end_byte = math.min(#last, e[2] + char_bytes(last, e[2] + 1))
    return {
      start = { line = l1 - 1, character = format.column(first, s[2], encoding) },
      ['end'] = { line = l2 - 1, character = format.column(last, end_byte, encoding) },
    }
  end
  if l2 < vim.api.nvim_buf_line_count(bufnr) then
    return { start = { line = l1 - 1, character = 0 }, ['end'] = { line = l2, character = 0 } }
  end
  local last = line_text(bufnr, l2 - 1)
  return { start = { line = l1 - 1, character = 0 }, ['end'] = { line = l2 - 1, character = format.column(last, #last, encoding) } }
end

local function send_intent(params)
  local client = get_client()
  if client and state.config.intent then
    call(client, 'notify', 'triage/intent', params)
  end
end

local function chat_intent(active)
  if state.chat_intent ~= active then
    state.chat_intent = active
    send_intent({ kind = 'chat', active = active })
  end
end

--- Stops the running answer (its model stream is closed).
function M.stop()
  local current = state.current
  if current then
    state.current = nil
    current.cancel()
    return true
  end
  return false
end

--- Streams a `triage/chat` into a window; returns the window.
function M.chat(params, title, shown)
  M.stop()
  local bufnr = params.bufnr
  params.bufnr = nil
  local token = string.format('triage-nvim-%d-%d', vim.fn.getpid(), state.next_token)
  state.next_token = state.next_token + 1
  local handle
  local win = window.open(title, shown, vim.tbl_extend('force', state.config.window, { keymaps = state.config.keymaps }), {
    on_cancel = function()
      if state.current == handle then
        M.stop()
      end
    end,
    on_close = function()
      if state.current == handle then
        M.stop()
      end
      chat_intent(false)
    end,
  })
  M._last_window = win
  chat_intent(true)
  local first = true
  state.streams[token] = function(delta)
    if first then
      first = false
      win:set_state('answering…')
    end
    win:append(delta)
  end
  params.partialResultToken = token
  handle = request('triage/chat', params, function(err, result)
    state.streams[token] = nil
    if state.current == handle then
      state.current = nil
    end
    if err then
      if err.code == REQUEST_CANCELLED then
        win:finish({ '', '── stopped: the model stream was closed' }, 'stopped')
      else
        local lines = { '', '── failed: ' .. (err.message or 'unknown error') }
        if type(err.data) == 'table' and type(err.data.model) == 'string' then
          vim.list_extend(lines, format.details(err.data))
        end
        win:finish(lines, 'failed')
      end
      return
    end
    state.last = result
    -- The deltas were the answer; the final text is authoritative.
    if type(result.text) == 'string' and win:answer() ~= result.text then
      win:set_answer(result.text)
    end
    win:finish(format.details(result), result.model .. ' · ' .. result.tier)
    redraw()
  end, bufnr)
  state.current = handle
  if not handle then
    win:finish({ '', '── not sent: the language server is not running' }, 'failed')
  end
  return win
end

local function document_params(bufnr, opts)
  M.attach(bufnr)
  return { uri = vim.uri_from_bufnr(bufnr) }, M.command_range(bufnr, opts)
end

local function selection_preview(bufnr, range)
  local lines = vim.api.nvim_buf_get_lines(bufnr, range.start.line, math.max(range.start.line + 1, range['end'].line), false)
  local shown = {}
  for i = 1, math.min(3, #lines) do
    shown[i] = lines[i]
  end
  if #lines > 3 then
    table.insert(shown, '…')
  end
  return table.concat(shown, '\n')
end

--- Explain / Explain shell command / Ask the heavy model on a range: streamed.
function M.stream_action(action, opts)
  local bufnr = vim.api.nvim_get_current_buf()
  local doc, range = document_params(bufnr, opts)
  local params = { textDocument = doc, range = range, action = action, bufnr = bufnr }
  if opts and opts.args and opts.args ~= '' then
    params.prompt = opts.args
  end
  return M.chat(params, ACTIONS[action], selection_preview(bufnr, range))
end

--- The answer handler of an editing command: the footer, or why nothing was applied.
local function edit_reported(action, on_done)
  return function(err, result)
    if err then
      if err.code ~= REQUEST_CANCELLED then
        notify(ACTIONS[action] .. ' failed: ' .. (err.message or '?'), vim.log.levels.ERROR)
      end
    elseif type(result) == 'table' then
      state.last = result
      if result.applied == false then
        notify(result.notApplied or 'the edit was not applied', vim.log.levels.WARN)
      else
        notify(format.footer(result) .. ' — `u` undoes it')
      end
    end
    if on_done then
      on_done(err, result)
    end
  end
end

--- Fix / Refactor / Add docstring / Write tests: the server edits the buffer through
--- workspace/applyEdit (one edit, one undo step).
function M.edit(action, opts, on_done)
  local bufnr = vim.api.nvim_get_current_buf()
  local doc, range = document_params(bufnr, opts)
  local argument = { uri = doc.uri, range = range }
  if opts and opts.args and opts.args ~= '' then
    argument.prompt = opts.args
  end
  notify(ACTIONS[action] .. '…')
  return request('workspace/executeCommand', { command = 'triage.' .. action, arguments = { argument } }, edit_reported(action, on_done), bufnr)
end

local STREAMED = { explain = true, explainShell = true, ask = true }

run_code_action = function(action, command, ctx)
  local argument = type(command.arguments) == 'table' and command.arguments[1] or nil
  if type(argument) ~= 'table' or type(argument.uri) ~= 'string' or type(argument.range) ~= 'table' then
    notify('the code action came without {uri, range}', vim.log.levels.ERROR)
    return
  end
  local bufnr = ctx and ctx.bufnr or vim.uri_to_bufnr(argument.uri)
  if STREAMED[action] then
    M.chat({ textDocument = { uri = argument.uri }, range = argument.range, action = action, bufnr = bufnr },
      ACTIONS[action], selection_preview(bufnr, argument.range))
    return
  end
  notify(ACTIONS[action] .. '…')
  request('workspace/executeCommand', { command = command.command, arguments = { argument } }, edit_reported(action), bufnr)
end

function M.ask(opts)
  local bufnr = vim.api.nvim_get_current_buf()
  local function send(prompt)
    if not prompt or vim.trim(prompt) == '' then
      chat_intent(false)
      return
    end
    local params = { prompt = prompt, bufnr = bufnr }
    if opts and (opts.range or 0) > 0 then
      params.textDocument, params.range = document_params(bufnr, opts)
    end
    if opts and opts.tier then
      params.tier = opts.tier
    end
    M.chat(params, opts and opts.title or 'Ask', prompt)
  end
  if opts and opts.args and opts.args ~= '' then
    return send(opts.args)
  end
  if not get_client() then
    M.attach(bufnr)
  end
  chat_intent(true)
  vim.ui.input({ prompt = 'triage: ' }, send)
end

function M.route(opts)
  local bufnr = vim.api.nvim_get_current_buf()
  local prompt = opts and opts.args or ''
  local params = { prompt = prompt }
  if opts and (opts.range or 0) > 0 then
    params.textDocument, params.range = document_params(bufnr, opts)
  end
  return request('triage/route', params, function(err, result)
    if err then
      notify('route failed: ' .. (err.message or '?'), vim.log.levels.ERROR)
      return
    end
    state.last = result
    M._last_window = window.show('Route (no model called)', format.decision(result), state.config.window)
  end, bufnr)
end

function M.show_status()
  return request('triage/status', nil, function(err, result)
    if err then
      notify('status failed: ' .. (err.message or '?'), vim.log.levels.ERROR)
      return
    end
    M._last_window = window.show('Status', format.report(result, state.last), state.config.window)
  end)
end

--- Sends new settings (the config file's schema) to the running server.
function M.configure(settings)
  state.config.settings = settings or {}
  local client = get_client()
  if client then
    call(client, 'notify', 'workspace/didChangeConfiguration', { settings = { triage = settings_value(settings) } })
    refresh_tiers(client)
  end
end

-- ---------------------------------------------------------------------------------------
-- Statusline

local SPINNER = { '⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏' }

--- "VRAM 7% · coder" (with a spinner while a request runs); '' before the server runs.
function M.statusline()
  if state.missing then
    return 'triage: no server'
  end
  if not state.status then
    return get_client() and 'triage' or ''
  end
  local text = format.status_text(state.status, state.tiers)
  if state.busy > 0 or type(state.status.working) == 'string' then
    local frame = SPINNER[math.floor(vim.loop.now() / 100) % #SPINNER + 1]
    text = frame .. ' ' .. text
  end
  return text
end

--- The highlight group of the current level (TriageOk, TriageWarn, TriageCritical).
function M.level_highlight()
  return format.level_highlight(state.status and state.status.level)
end

--- The component with its colour, for a plain 'statusline': `%{%v:lua.require'triage'.statusline_highlighted()%}`.
function M.statusline_highlighted()
  local text = M.statusline()
  if text == '' then
    return ''
  end
  return '%#' .. M.level_highlight() .. '#' .. text:gsub('%%', '%%%%') .. '%*'
end

--- The last `triage/status` notification and routing decision.
function M.status()
  return state.status
end

function M.last_decision()
  return state.last
end

-- ---------------------------------------------------------------------------------------
-- Selection intent (≥ 5 lines, debounced)

local selection_timer = nil
local function selection_changed()
  if selection_timer then
    selection_timer:stop()
    selection_timer:close()
    selection_timer = nil
  end
  local mode = vim.api.nvim_get_mode().mode
  local visual = mode == 'v' or mode == 'V' or mode == '\22'
  local lines = visual and (math.abs(vim.fn.line('v') - vim.fn.line('.')) + 1) or 0
  if lines < 5 then
    if state.selection_intent then
      state.selection_intent = false
      send_intent({ kind = 'selection', active = false })
    end
    return
  end
  local bufnr = vim.api.nvim_get_current_buf()
  selection_timer = vim.loop.new_timer()
  selection_timer:start(300, 0, vim.schedule_wrap(function()
    if selection_timer then
      selection_timer:close()
      selection_timer = nil
    end
    local m = vim.api.nvim_get_mode().mode
    if not (m == 'v' or m == 'V' or m == '\22') or vim.api.nvim_get_current_buf() ~= bufnr then
      return
    end
    local a, b = vim.fn.line('v'), vim.fn.line('.')
    local l1, l2 = math.min(a, b), math.max(a, b)
    state.selection_intent = true
    send_intent({
      kind = 'selection',
      active = true,
      textDocument = { uri = vim.uri_from_bufnr(bufnr) },
      range = M.command_range(bufnr, { range = 2, line1 = l1, line2 = l2 }),
    })
  end))
end

-- ---------------------------------------------------------------------------------------
-- Setup

local function define_highlights()
  vim.cmd('highlight default link TriageOk StatusLine')
  vim.cmd('highlight default link TriageWarn DiagnosticWarn')
  vim.cmd('highlight default link TriageCritical DiagnosticError')
end

local function define_commands()
  local command = vim.api.nvim_create_user_command
  command('TriageAsk', function(o)
    M.ask({ args = o.args, range = o.range, line1 = o.line1, line2 = o.line2 })
  end, { nargs = '*', range = true, desc = 'triage: ask (streamed into a window)' })
  command('TriageAskHeavy', function(o)
    if o.range > 0 then
      -- On a selection: the code action "Ask the heavy model (deep analysis)".
      M.stream_action('ask', o)
    else
      M.ask({ args = o.args, tier = 'heavy', title = 'Ask the heavy model' })
    end
  end, { nargs = '*', range = true, desc = 'triage: ask the heavy model' })
  for name, action in pairs({ TriageExplain = 'explain', TriageExplainShell = 'explainShell' }) do
    command(name, function(o)
      M.stream_action(action, o)
    end, { nargs = '*', range = true, desc = 'triage: ' .. ACTIONS[action] })
  end
  for name, action in pairs({ TriageFix = 'fix', TriageRefactor = 'refactor', TriageDocstring = 'docstring', TriageTests = 'tests' }) do
    command(name, function(o)
      M.edit(action, o)
    end, { nargs = '*', range = true, desc = 'triage: ' .. ACTIONS[action] })
  end
  command('TriageStatus', function()
    M.show_status()
  end, { desc = 'triage: status (endpoints, GPU, tiers, latency)' })
  command('TriageRoute', function(o)
    M.route(o)
  end, { nargs = '*', range = true, desc = 'triage: the routing decision, no model called' })
  command('TriageStop', function()
    if not M.stop() then
      notify('nothing is running')
    end
  end, { desc = 'triage: stop the running answer' })
end

function M.setup(opts)
  local config = vim.tbl_deep_extend('force', vim.deepcopy(defaults), opts or {})
  if not config.cmd then
    config.cmd = vim.list_extend({ config.server_path }, vim.list_extend(vim.deepcopy(config.args), { 'serve' }))
  end
  config.root_dir = config.root_dir or vim.loop.cwd()
  state.config = config
  state.missing = false
  define_highlights()
  define_commands()
  local group = vim.api.nvim_create_augroup('triage', { clear = true })
  vim.api.nvim_create_autocmd({ 'BufReadPost', 'BufNewFile', 'FileType' }, {
    group = group,
    callback = function(args)
      M.attach(args.buf)
    end,
  })
  if config.intent then
    vim.api.nvim_create_autocmd({ 'CursorMoved', 'ModeChanged' }, { group = group, callback = selection_changed })
  end
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and vim.api.nvim_buf_get_name(bufnr) ~= '' then
      M.attach(bufnr)
    end
  end
end

M.ACTIONS = ACTIONS

return M
