-- A tiny HTTP/1.1 client on ngx cosockets, so the plugin needs nothing beyond lua-nginx-module
-- (Kong ships lua-resty-http, plain OpenResty does not). One request per call; `timeout_ms`
-- bounds the whole exchange (connect + send + headers + body), not each step.
--
-- Connections are kept alive in the cosocket pool. A pooled connection the server has closed in
-- the meantime fails on first use; such a request is retried once on a fresh connection when
-- nothing was received yet and time is left (safe here: /v1/check is idempotent by request id,
-- /v1/usage by event id).
local ngx = ngx
local tcp = ngx.socket.tcp
local now = ngx.now
local update_time = ngx.update_time
local tonumber = tonumber
local concat = table.concat
local floor = math.floor

local _M = {}

_M.MAX_BODY = 65536  -- the enforcer's replies are a few hundred bytes

local function remaining_ms(deadline)
  update_time()
  local left = floor(deadline - now() * 1000)
  if left < 1 then
    return nil
  end
  return left
end

-- Every socket step gets what is left of the one deadline: timeout_ms bounds the whole exchange.
local function arm(sock, deadline)
  local left = remaining_ms(deadline)
  if not left then
    return false
  end
  sock:settimeout(left)
  return true
end

local function receive(sock, deadline, pattern)
  if not arm(sock, deadline) then
    return nil, "timeout"
  end
  return sock:receive(pattern)
end

local function read_body(sock, deadline, headers)
  local te = headers["transfer-encoding"]
  if te and te:lower():find("chunked", 1, true) then
    local parts, size = {}, 0
    while true do
      local line, err = receive(sock, deadline, "*l")
      if not line then
        return nil, err
      end
      local n = tonumber(line:match("^%s*(%x+)"), 16)
      if not n then
        return nil, "bad chunk size"
      end
      if n == 0 then
        repeat  -- trailers, up to the empty line
          line, err = receive(sock, deadline, "*l")
          if not line then
            return nil, err
          end
        until line == ""
        return concat(parts), nil, true
      end
      size = size + n
      if size > _M.MAX_BODY then
        return nil, "reply too large"
      end
      local data
      data, err = receive(sock, deadline, n)
      if not data then
        return nil, err
      end
      parts[#parts + 1] = data
      line, err = receive(sock, deadline, "*l")
      if not line then
        return nil, err
      end
    end
  end
  local length = headers["content-length"]
  if length then
    length = tonumber(length)
    if not length or length < 0 then
      return nil, "bad content-length"
    end
    if length > _M.MAX_BODY then
      return nil, "reply too large"
    end
    if length == 0 then
      return "", nil, true
    end
    local data, err = receive(sock, deadline, length)
    if not data then
      return nil, err
    end
    return data, nil, true
  end
  -- neither: the body runs to the end of the connection
  local data, err, partial = receive(sock, deadline, "*a")
  if not data then
    return nil, err, false, partial
  end
  if #data > _M.MAX_BODY then
    return nil, "reply too large"
  end
  return data, nil, false
end

local function exchange(target, method, path, body, deadline, opts)
  local sock = tcp()
  if not arm(sock, deadline) then
    return nil, "timeout", false
  end
  local pool = target.scheme .. "://" .. target.host .. ":" .. target.port
  local ok, err = sock:connect(target.host, target.port, { pool = pool, pool_size = opts.pool_size })
  if not ok then
    return nil, "connect: " .. tostring(err), false
  end
  local reused = (sock:getreusedtimes() or 0) > 0
  if target.scheme == "https" and not reused then
    if not arm(sock, deadline) then
      sock:close()
      return nil, "timeout", false
    end
    local session
    session, err = sock:sslhandshake(nil, target.host, opts.ssl_verify)
    if not session then
      sock:close()
      return nil, "tls: " .. tostring(err), false
    end
  end
  local req = {
    method, " ", target.base_path, path, " HTTP/1.1\r\n",
    "Host: ", target.authority, "\r\n",
    "User-Agent: tollgate-kong\r\n",
    opts.trace_headers or "",
    "Accept: application/json\r\n",
    "Content-Type: ", opts.content_type or "application/json", "\r\n",
    "Content-Length: ", #body, "\r\n",
    "\r\n",
    body,
  }
  if not arm(sock, deadline) then
    sock:close()
    return nil, "timeout", false
  end
  local sent
  sent, err = sock:send(req)
  if not sent then
    sock:close()
    return nil, "send: " .. tostring(err), reused
  end

  local line
  line, err = receive(sock, deadline, "*l")
  if not line then
    sock:close()
    return nil, "receive: " .. tostring(err), reused
  end
  local status = tonumber(line:match("^HTTP/1%.[01] (%d%d%d)"))
  if not status then
    sock:close()
    return nil, "bad status line", false
  end
  local headers = {}
  while true do
    line, err = receive(sock, deadline, "*l")
    if not line then
      sock:close()
      return nil, "receive: " .. tostring(err), false
    end
    if line == "" then
      break
    end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then
      name = name:lower()
      local old = headers[name]
      headers[name] = old and (old .. ", " .. value) or value
    end
  end
  local data, complete
  data, err, complete = read_body(sock, deadline, headers)
  if not data then
    sock:close()
    return nil, "body: " .. tostring(err), false
  end
  local conn = headers["connection"]
  if complete and opts.keepalive_ms > 0 and not (conn and conn:lower():find("close", 1, true)) then
    sock:setkeepalive(opts.keepalive_ms, opts.pool_size)
  else
    sock:close()
  end
  return { status = status, headers = headers, body = data }
end

--- request(target, method, path, body, opts) -> {status, headers (lower-case names), body} | nil, err
-- target: core.parse_url's result. opts: timeout_ms, keepalive_ms (0: close), pool_size, ssl_verify.
-- content_type (default application/json), trace_headers (lines to add).
function _M.request(target, method, path, body, opts)
  update_time()
  local deadline = now() * 1000 + opts.timeout_ms
  local res, err, retry = exchange(target, method, path, body, deadline, opts)
  if not res and retry and remaining_ms(deadline) then
    res, err = exchange(target, method, path, body, deadline, opts)
  end
  return res, err
end

return _M
