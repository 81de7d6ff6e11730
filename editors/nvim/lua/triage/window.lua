--- The floating window answers stream into (and status and routing reports are shown in).
--- UI only: it appends the text it is given, maps the cancel and close keys, and tells its
--- owner when it is closed.
local M = {}

local Window = {}
Window.__index = Window

local namespace = vim.api.nvim_create_namespace('triage')

local function dimensions(opts)
  local columns, lines = vim.o.columns, vim.o.lines
  local width = math.max(40, math.floor(columns * (opts.width or 0.45)))
  local height = math.max(8, math.floor((lines - 2) * (opts.height or 0.6)))
  width = math.min(width, columns - 2)
  height = math.min(height, lines - 4)
  return width, height, math.max(0, columns - width - 2), 1
end

--- Opens a window. `handlers.on_cancel` runs on the cancel key, `handlers.on_close` once when
--- the window goes (by the close key or any other way).
function M.open(title, subtitle, opts, handlers)
  opts = opts or {}
  handlers = handlers or {}
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_option(buf, 'bufhidden', 'wipe')
  vim.api.nvim_buf_set_option(buf, 'filetype', 'markdown')
  local width, height, col, row = dimensions(opts)
  local win = vim.api.nvim_open_win(buf, opts.enter ~= false, {
    relative = 'editor',
    width = width,
    height = height,
    col = col,
    row = row,
    style = 'minimal',
    border = opts.border or 'rounded',
  })
  vim.api.nvim_win_set_option(win, 'wrap', true)
  vim.api.nvim_win_set_option(win, 'linebreak', true)
  local header = { '# triage: ' .. title }
  if subtitle and subtitle ~= '' then
    for _, line in ipairs(vim.split(subtitle, '\n', { plain = true })) do
      table.insert(header, '> ' .. line)
    end
  end
  table.insert(header, '')
  -- The header, then the (empty) first line of the answer.
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, vim.list_extend(vim.deepcopy(header), { '' }))
  local self = setmetatable({ buf = buf, win = win, answer_start = #header, closed = false, handlers = handlers }, Window)
  self:set_state('routing…')
  local keys = opts.keymaps or {}
  local map = function(lhs, fn)
    if lhs and lhs ~= '' then
      vim.api.nvim_buf_set_keymap(buf, 'n', lhs, '', { noremap = true, nowait = true, silent = true, callback = fn })
    end
  end
  map(keys.cancel or '<C-c>', function()
    if handlers.on_cancel then
      handlers.on_cancel()
    end
  end)
  map(keys.close or 'q', function()
    self:close()
  end)
  vim.api.nvim_create_autocmd({ 'BufWipeout' }, {
    buffer = buf,
    once = true,
    callback = function()
      self:_closed()
    end,
  })
  return self
end

function Window:valid()
  return not self.closed and vim.api.nvim_buf_is_valid(self.buf)
end

--- The virtual text after the header: "routing…", "answering…", "stopped".
function Window:set_state(text)
  if not self:valid() then
    return
  end
  vim.api.nvim_buf_clear_namespace(self.buf, namespace, 0, -1)
  local line = math.max(0, self.answer_start - 1)
  vim.api.nvim_buf_set_extmark(self.buf, namespace, line, 0, {
    virt_text = { { text, 'Comment' } },
    virt_text_pos = 'eol',
  })
end

--- Appends streamed text (which may hold newlines) to the answer.
function Window:append(text)
  if not self:valid() or text == '' then
    return
  end
  local last_index = vim.api.nvim_buf_line_count(self.buf) - 1
  local last = vim.api.nvim_buf_get_lines(self.buf, last_index, last_index + 1, false)[1] or ''
  local pieces = vim.split(last .. text, '\n', { plain = true })
  vim.api.nvim_buf_set_lines(self.buf, last_index, last_index + 1, false, pieces)
  self:follow()
end

--- Replaces the answer with `text` (the final, whole answer).
function Window:set_answer(text)
  if not self:valid() then
    return
  end
  vim.api.nvim_buf_set_lines(self.buf, self.answer_start, self.answer_end or -1, false, vim.split(text, '\n', { plain = true }))
end

--- The answer's text as shown.
function Window:answer()
  if not self:valid() then
    return ''
  end
  return table.concat(vim.api.nvim_buf_get_lines(self.buf, self.answer_start, self.answer_end or -1, false), '\n')
end

function Window:lines()
  if not self:valid() then
    return {}
  end
  return vim.api.nvim_buf_get_lines(self.buf, 0, -1, false)
end

--- Adds the lines under the answer (footer, reasons…) and marks the window done.
function Window:finish(lines, state)
  if not self:valid() then
    return
  end
  self.answer_end = self.answer_end or vim.api.nvim_buf_line_count(self.buf)
  vim.api.nvim_buf_set_lines(self.buf, -1, -1, false, lines or {})
  self:set_state(state or 'done')
  self:follow()
end

function Window:follow()
  if vim.api.nvim_win_is_valid(self.win) then
    local count = vim.api.nvim_buf_line_count(self.buf)
    pcall(vim.api.nvim_win_set_cursor, self.win, { count, 0 })
  end
end

function Window:close()
  if vim.api.nvim_win_is_valid(self.win) then
    vim.api.nvim_win_close(self.win, true)
  end
  self:_closed()
end

function Window:_closed()
  if self.closed then
    return
  end
  self.closed = true
  if self.handlers.on_close then
    self.handlers.on_close()
  end
end

--- A window with fixed content (status, routing decision).
function M.show(title, lines, opts)
  local w = M.open(title, nil, opts, {})
  vim.api.nvim_buf_set_lines(w.buf, w.answer_start, -1, false, lines)
  w:set_state('')
  return w
end

return M
