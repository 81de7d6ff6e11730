--- `:checkhealth triage`: the binary is found, `triage serve` starts and answers over LSP,
--- the model servers are reachable and the GPU is seen. vim.health on current Neovim,
--- health#report_* (the `health` module) on 0.7.
local M = {}

local function reporter()
  local h = vim.health
  if h and (h.start or h.report_start) then
    return {
      start = h.start or h.report_start,
      ok = h.ok or h.report_ok,
      info = h.info or h.report_info,
      warn = h.warn or h.report_warn,
      error = h.error or h.report_error,
    }
  end
  local legacy = require('health')
  return {
    start = legacy.report_start,
    ok = legacy.report_ok,
    info = legacy.report_info,
    warn = legacy.report_warn,
    error = legacy.report_error,
  }
end

local function frame(message)
  local body = vim.fn.json_encode(message)
  return 'Content-Length: ' .. #body .. '\r\n\r\n' .. body
end

--- Runs one short LSP session with the server: initialize, triage/status, shutdown, exit.
--- Returns the initialize result and the status (or an error text).
local function session(cmd, env, settings)
  local buffer = ''
  local responses = {}
  local stderr = {}
  local job_opts = {
    on_stdout = function(_, data)
      buffer = buffer .. table.concat(data, '\n')
      while true do
        local header_end = buffer:find('\r\n\r\n', 1, true)
        if not header_end then
          break
        end
        local length = tonumber(buffer:sub(1, header_end):match('Content%-Length: *(%d+)'))
        if not length or #buffer < header_end + 3 + length then
          break
        end
        local body = buffer:sub(header_end + 4, header_end + 3 + length)
        buffer = buffer:sub(header_end + 4 + length)
        local ok, message = pcall(vim.fn.json_decode, body)
        if ok and type(message) == 'table' and message.id ~= nil and message.method == nil then
          responses[message.id] = message
        end
      end
    end,
    on_stderr = function(_, data)
      vim.list_extend(stderr, data)
    end,
    stdout_buffered = false,
  }
  if env then
    job_opts.env = env
  end
  local ok, job = pcall(vim.fn.jobstart, cmd, job_opts)
  if not ok or job <= 0 then
    return nil, nil, 'could not start ' .. table.concat(cmd, ' ')
  end
  local init_options = (type(settings) == 'table' and next(settings) ~= nil) and settings or vim.empty_dict()
  vim.fn.chansend(job, frame({ jsonrpc = '2.0', id = 1, method = 'initialize', params = {
    processId = vim.fn.getpid(), rootUri = vim.NIL, capabilities = vim.empty_dict(), initializationOptions = init_options } }))
  local answered = vim.wait(10000, function()
    return responses[1] ~= nil
  end, 20)
  if not answered then
    vim.fn.jobstop(job)
    return nil, nil, 'no answer to initialize within 10 s' .. (#stderr > 0 and (': ' .. table.concat(stderr, ' ')) or '')
  end
  vim.fn.chansend(job, frame({ jsonrpc = '2.0', method = 'initialized', params = vim.empty_dict() }))
  vim.fn.chansend(job, frame({ jsonrpc = '2.0', id = 2, method = 'triage/status' }))
  vim.wait(15000, function()
    return responses[2] ~= nil
  end, 20)
  vim.fn.chansend(job, frame({ jsonrpc = '2.0', id = 3, method = 'shutdown' }))
  vim.wait(3000, function()
    return responses[3] ~= nil
  end, 20)
  vim.fn.chansend(job, frame({ jsonrpc = '2.0', method = 'exit' }))
  if vim.fn.jobwait({ job }, 3000)[1] == -1 then
    vim.fn.jobstop(job)
  end
  local status = responses[2]
  if not status then
    return responses[1].result, nil, 'no answer to triage/status within 15 s'
  end
  if status.error then
    return responses[1].result, nil, status.error.message
  end
  return responses[1].result, status.result, nil
end

function M.check()
  local report = reporter()
  report.start('triage')
  local triage = package.loaded['triage']
  local config = triage and triage._state.config
  if not config then
    report.warn("require('triage').setup() has not run: nothing is attached", { "Add require('triage').setup({}) to your init.lua" })
    config = { cmd = { 'triage', 'serve' }, settings = {} }
  end
  local version = vim.version and vim.version() or nil
  local attach = vim.lsp.start and 'vim.lsp.start' or 'vim.lsp.start_client + vim.lsp.buf_attach_client'
  report.info(string.format('Neovim %s: attaching with %s',
    version and string.format('%d.%d.%d', version.major, version.minor, version.patch) or '?', attach))

  local binary = config.cmd[1]
  if vim.fn.executable(binary) ~= 1 then
    report.error(string.format('`%s` not found or not executable', binary), {
      'Install it: `cargo install --path .` in a clone of triage (puts it in ~/.cargo/bin)',
      "or point the plugin at it: require('triage').setup({ server_path = '/path/to/triage' })",
    })
    return
  end
  local path = vim.fn.exepath(binary)
  local output = vim.fn.system({ binary, '--version' })
  report.ok(string.format('binary found: %s (%s)', path ~= '' and path or binary, vim.trim(output)))

  local init, status, err = session(config.cmd, config.cmd_env, config.settings)
  if not init then
    report.error('`' .. table.concat(config.cmd, ' ') .. '` did not start: ' .. (err or '?'))
    return
  end
  local info = init.serverInfo or {}
  report.ok(string.format('server starts and answers initialize (%s %s)', info.name or 'triage', info.version or ''))
  if triage and triage._state.client_id and vim.lsp.get_client_by_id(triage._state.client_id) then
    report.ok('the language server is attached in this session')
  else
    report.info('no triage client runs in this session yet (it starts with the first normal buffer)')
  end
  if not status then
    report.error('triage/status failed: ' .. (err or '?'))
    return
  end
  for _, endpoint in ipairs(status.endpoints or {}) do
    if endpoint.reachable then
      report.ok(string.format('endpoint %s (%s, %s) reachable%s · %d models', endpoint.name, endpoint.kind, endpoint.url,
        endpoint.version and (', ' .. endpoint.version) or '', #(endpoint.models or {})))
    else
      report.error(string.format('endpoint %s (%s) is not reachable: %s', endpoint.name, endpoint.url, endpoint.error or '?'),
        { 'Start the model server (`ollama serve`), or fix its URL in the settings / config file (OLLAMA_HOST moves the default)' })
    end
  end
  for _, tier in ipairs(status.tiers or {}) do
    if tier.enabled and tier.present == false then
      report.warn(string.format('%s tier: %s is missing on %s', tier.tier, tier.model, table.concat(tier.endpoints or {}, ', ')),
        { string.format('Pull it: `ollama pull %s`, or set another model for the tier', tier.model) })
    end
  end
  local gpu = status.gpu or {}
  if gpu.seen then
    report.ok(string.format('GPU seen: %d MB used of %d MB (level %s)', gpu.used_mb or 0, gpu.total_mb or 0, gpu.level or '?'))
  else
    report.warn('no GPU seen: routing by analysis alone (VRAM rules need an NVIDIA driver with NVML)')
  end
end

return M
