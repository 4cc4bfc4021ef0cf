-- Usage reports of one nginx worker, batched: one POST <usage_url>/v1/usage of a CloudEvents
-- batch (application/cloudevents-batch+json) per `usage_batch_size` reports or per
-- `usage_flush_ms` after the first one waiting, as Kong's http-log plugin does with its queue.
--
-- One queue per plugin configuration (Kong hands a new conf table when the configuration
-- changes: the old queue drains and is forgotten). At most one pending timer per queue, not one
-- per request: set for usage_flush_ms after the first report waiting, or at once when a batch is
-- full; it sends every full or due batch, then sets itself for the next. nginx runs pending
-- timers early when the worker exits (reload, quit): then it sends all that waits.
--
-- The enforcer accepts or refuses a batch whole. A 4xx refusal (e.g. a revoked key's 401 for one
-- report) sends its reports again one by one with the plain JSON body, so one bad report never
-- loses the others. A connection error, a timeout or a 5xx sends the batch again after
-- 0.1, 0.2, 0.4 ... s, `usage_retries` times (the enforcer bills an event id once, so a batch it
-- stored but did not answer costs nothing twice), then drops it with an error log. At most
-- `usage_max_buffered` reports wait: past that the oldest is dropped with an error log, and
-- `_M.dropped` counts the reports this worker dropped. When the worker exits (reload, quit) the
-- timer sends what waits without pausing between tries.
--
-- A batch carries no trace context (its reports come from many requests); usage_batch_size = 1
-- keeps one POST per request, with the client's traceparent (handler.lua), retried the same way.
local cjson = require "cjson.safe"
local http = require "kong.plugins.tollgate.http"

local ngx = ngx
local timer_at = ngx.timer.at
local exiting = ngx.worker.exiting
local now = ngx.now
local update_time = ngx.update_time
local sleep = ngx.sleep
local pcall = pcall
local concat = table.concat
local encode = cjson.encode
local setmetatable = setmetatable
local tostring = tostring

local _M = {}

_M.MAX_BATCH_BYTES = 60000   -- the enforcer refuses bodies over 64 KiB
_M.SOURCE = "kong/tollgate"
_M.BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
_M.dropped = 0               -- reports this worker dropped (buffer full, or retries spent)

local queues = setmetatable({}, { __mode = "k" })

-- One CloudEvent (structured mode) around a plain usage body, concatenated: the body is already JSON.
local function cloudevent(r)
  return concat({
    '{"specversion":"1.0","id":', encode(r.id), ',"source":"', _M.SOURCE, '","type":', encode(r.type),
    ',"time":', encode(r.time), ',"datacontenttype":"application/json","data":', r.body, "}",
  })
end

local function ok_status(status)
  return status == 202 or status == 200
end

local function drop(what, n, why)
  _M.dropped = _M.dropped + n
  ngx.log(ngx.ERR, "[tollgate] usage report", n > 1 and "s " or " ", what, " dropped (", why, "); ",
          _M.dropped, " dropped by this worker so far")
end

-- POST `body` to /v1/usage, again after a pause on a connection error, timeout or 5xx, `retries`
-- times (no pause once the worker is exiting). Returns the last response (a 2xx or a 4xx) or nil
-- and the last error. Also the single report's path (handler.lua, usage_batch_size = 1).
function _M.post(target, opts, retries, body, what)
  local res, err
  for attempt = 0, retries do
    res, err = http.request(target, "POST", "/v1/usage", body, opts)
    if res and res.status < 500 then
      return res
    end
    if res then
      err = "HTTP " .. res.status .. " " .. tostring(res.body)
    end
    if attempt < retries then
      local pause = exiting() and 0 or 0.1 * 2 ^ attempt
      ngx.log(ngx.WARN, "[tollgate] usage ", what, " failed (", err, "): sending it again in ", pause, " s")
      if pause > 0 then
        sleep(pause)
      end
    end
  end
  return nil, err
end

local function post(q, body, content_type, trace)
  local opts = q.opts
  opts.content_type, opts.trace_headers = content_type, trace
  return _M.post(q.target, opts, q.retries, body, content_type and "batch" or "report")
end

local function send_one(q, r)
  local res, err = post(q, r.body, nil, r.trace)
  if not res then
    drop("of " .. r.request_id, 1, err)
  elseif not ok_status(res.status) then
    ngx.log(ngx.ERR, "[tollgate] usage report of ", r.request_id, " refused: HTTP ", res.status, " ", res.body)
  end
end

-- The next batch off the head of the buffer: at most batch_size reports, at most MAX_BATCH_BYTES.
local function take(q)
  local buf, head = q.buf, q.head
  local parts, reports, bytes = {}, {}, 2
  while head <= q.tail and #reports < q.batch_size do
    local r = buf[head]
    local ce = cloudevent(r)
    if #reports > 0 and bytes + #ce + 1 > _M.MAX_BATCH_BYTES then
      break
    end
    bytes = bytes + #ce + 1
    parts[#parts + 1] = ce
    reports[#reports + 1] = r
    buf[head] = nil
    head = head + 1
  end
  q.head = head
  return reports, "[" .. concat(parts, ",") .. "]"
end

local function send_batch(q)
  local reports, body = take(q)
  local res, err = post(q, body, _M.BATCH_CONTENT_TYPE, nil)
  if not res then
    return drop("of a batch", #reports, err)
  end
  if ok_status(res.status) then
    return
  end
  -- refused whole (4xx): each report on its own, so the good ones are not lost with the bad one
  ngx.log(ngx.WARN, "[tollgate] usage batch of ", #reports, " refused: HTTP ", res.status, " ", res.body,
          "; sending its reports one by one")
  for i = 1, #reports do
    send_one(q, reports[i])
  end
end

local function size(q)
  return q.tail - q.head + 1
end

local flush

-- One pending timer per queue: a timer scheduled earlier finds another token and does nothing
-- (unless the worker exits: then every timer sends what waits).
local function schedule(q, delay)
  q.token = q.token + 1
  q.due = now() + delay
  local ok, err = timer_at(delay, flush, q, q.token)
  if not ok then
    q.due = -1  -- the next report tries again
    ngx.log(ngx.ERR, "[tollgate] usage reports not scheduled (", size(q), " waiting): ", err)
  end
end

-- Sends every full or due batch (all of them when the worker exits), then schedules the next.
flush = function(premature, q, token)
  if q.running or (token ~= q.token and not premature) then
    return
  end
  q.running = true
  while size(q) > 0 do
    update_time()
    if not (size(q) >= q.batch_size or q.buf[q.head].at + q.flush_s <= now() or premature or exiting()) then
      break
    end
    local ok, err = pcall(send_batch, q)
    if not ok then
      ngx.log(ngx.ERR, "[tollgate] usage batch failed: ", err)
    end
  end
  q.running = false
  if size(q) > 0 then
    schedule(q, q.buf[q.head].at + q.flush_s - now())
  else
    q.head, q.tail = 1, 0
  end
end

local function queue_of(conf, target, opts)
  local q = queues[conf]
  if not q then
    q = {
      buf = {}, head = 1, tail = 0, running = false, token = 0, due = 0,
      target = target, opts = opts,
      batch_size = conf.usage_batch_size, flush_s = conf.usage_flush_ms / 1000,
      max = conf.usage_max_buffered, retries = conf.usage_retries,
    }
    queues[conf] = q
  end
  return q
end

--- add(conf, target, opts, report): report = {body (the plain JSON usage body), id (its event
-- id), type, time, request_id, trace}. Never yields: called from the log phase.
function _M.add(conf, target, opts, report)
  local q = queue_of(conf, target, opts)
  if size(q) >= q.max then
    local oldest = q.buf[q.head]
    q.buf[q.head] = nil
    q.head = q.head + 1
    drop("of " .. oldest.request_id, 1, "more than usage_max_buffered = " .. q.max .. " waiting")
  end
  report.at = now()
  q.tail = q.tail + 1
  q.buf[q.tail] = report
  if q.running then
    return  -- the running flush sends it, or schedules its time
  end
  local n = size(q)
  if n == 1 or q.due < 0 then
    schedule(q, q.flush_s)
  elseif n >= q.batch_size and q.due > report.at then
    schedule(q, 0)
  end
end

return _M
