-- Shared by admit.lua and settle.lua (prepended to each at load time).
-- Times are integer microseconds (Redis TIME is the only clock), money is
-- integer nano-USD; both stay below 2^53 so Lua's doubles are exact. Numbers
-- go back to Redis through fmt: Redis would print large doubles in exponent
-- form, which HINCRBY and SET would reject or misread.
local function fmt(n) return string.format('%d', n) end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The index (0-2) of the window in ARGV[i..i+5] (three start, end pairs)
-- that contains now, as limiter.pickWindow; returns it with its start, end.
local function pick_window(i, now)
  local w = 0
  for j = 0, 2 do
    local s, e = tonumber(ARGV[i + 2 * j]), tonumber(ARGV[i + 1 + 2 * j])
    if s <= now then
      w = j
      if now < e then break end
    end
  end
  return w, tonumber(ARGV[i + 2 * w]), tonumber(ARGV[i + 1 + 2 * w])
end

local P = 60000000 -- the GCRA period, one minute in µs

-- floor(cost * 60s / limit), as limiter.increment does.
local function increment(cost, limit)
  if limit <= 0 then return 0 end
  return math.floor(cost * P / limit)
end

-- Sets a TAT key to tat, expiring when it stops mattering (tat <= now is a
-- full bucket, the same as no key).
local function set_tat(key, tat, now)
  if tat > now then
    redis.call('SET', key, fmt(tat), 'PX', fmt(math.ceil((tat - now) / 1000) + 1))
  else
    redis.call('DEL', key)
  end
end

-- Alert thresholds per budget name from ARGV, starting at index i:
-- count, then per budget: name, n, n thresholds. Returns the table and the
-- next index.
local function read_alerts(i)
  local alerts = {}
  local n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do
    local name = ARGV[i]
    local k = tonumber(ARGV[i + 1]); i = i + 2
    local list = {}
    for j = 1, k do list[j] = tonumber(ARGV[i + j - 1]) end
    i = i + k
    alerts[name] = list
  end
  return alerts, i
end

local function budget_key(prefix, name, start_us)
  return prefix .. 'b:' .. name .. ':' .. fmt(math.floor(start_us / 1000000))
end

local function alert_key(prefix, name, start_us)
  return prefix .. 'a:' .. name .. ':' .. fmt(math.floor(start_us / 1000000))
end

-- Replaces a reservation's estimate by cost in each window listed in its
-- record ("name\tstart\tend\n" lines), records first alert crossings into
-- crossed, and returns {name, start, end, spent, reserved} per window.
local function charge(prefix, windows, est, cost, alerts, retention_s, crossed)
  local out = {}
  for name, s, e in string.gmatch(windows or '', '([^\t\n]+)\t(%d+)\t(%d+)\n') do
    local start_us, end_us = tonumber(s), tonumber(e)
    local bkey = budget_key(prefix, name, start_us)
    local expire_at = fmt(math.floor(end_us / 1000000) + retention_s)
    local reserved = redis.call('HINCRBY', bkey, 'reserved', fmt(-est))
    local spent = redis.call('HINCRBY', bkey, 'spent', fmt(cost))
    redis.call('EXPIREAT', bkey, expire_at)
    local list = alerts[name]
    if list then
      local akey = alert_key(prefix, name, start_us)
      local added = false
      for _, a in ipairs(list) do
        if spent >= a and redis.call('SADD', akey, fmt(a)) == 1 then
          crossed[#crossed + 1] = {name, s, e, a, spent}
          added = true
        end
      end
      if added then redis.call('EXPIREAT', akey, expire_at) end
    end
    out[#out + 1] = {name, s, e, spent, reserved}
  end
  return out
end

local function finish(pkey, rkey, id, state, keep_ms)
  redis.call('ZREM', pkey, id)
  redis.call('HSET', rkey, 'st', state)
  redis.call('PEXPIRE', rkey, keep_ms)
end

-- Charges every reservation whose expiry has passed at its estimate, up to
-- limit, oldest first; appends {id, model, cost} to expired.
local function sweep(prefix, pkey, now, limit, alerts, retention_s, keep_ms, expired, crossed)
  local ids = redis.call('ZRANGEBYSCORE', pkey, '-inf', fmt(now), 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local rkey = prefix .. 'r:' .. id
    local rec = redis.call('HMGET', rkey, 'st', 'cost', 'model', 'b')
    if rec[1] == 'p' then
      local est = tonumber(rec[2])
      charge(prefix, rec[4], est, est, alerts, retention_s, crossed)
      finish(pkey, rkey, id, 'x', keep_ms)
      expired[#expired + 1] = {id, rec[3] or '', est}
    else
      redis.call('ZREM', pkey, id)
    end
  end
end
