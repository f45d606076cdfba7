-- Shared by admit.lua and settle.lua (prepended to each at load time).
-- Times are integer microseconds (Redis TIME is the only clock), money is
-- integer nano-USD; both stay below 2^53 so Lua's doubles are exact. Numbers
-- go back to Redis through fmt: Redis would print large doubles in exponent
-- form, which HSET, HINCRBY and ZADD would reject or misread.
--
-- Every redis.call costs Redis a command dispatch, so the scripts keep each
-- tenant's small state in one hash (read with one HMGET, written with one
-- HSET), and refresh a key's expiry only when it would otherwise lapse
-- early: the hash remembers the expiries it set.
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

-- Alert thresholds per budget name from ARGV, starting at index i:
-- count, then per budget with thresholds: name, n, n thresholds (a budget
-- left out has none). Returns the table and the next index.
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

-- The tenant state hash (KEYS[1]) holds, all optional:
--   r, t  the RPM and TPM theoretical arrival times (µs); a value <= now is
--         a full bucket, the same as no value;
--   n     a lower bound of the earliest score in the pending zset (NONE when
--         it was empty): while n > now nothing has expired, so the sweep and
--         ZCOUNT are skipped; absent means unknown (sweep);
--   pe    the pending zset's expiry (ms) as last set, absent means unknown;
--   e     the hash's own expiry (ms).
-- Losing the hash (expiry, eviction) only costs the next call a sweep and
-- fresh PEXPIREs: every absent field falls back to the safe, slower path.
local NONE = 4503599627370496 -- 2^52 µs, far beyond any real expiry
local STATE_MARGIN_MS = 60000 -- extend the hash by a minute at a time

-- Writes fields (a flat name, value list, possibly empty) to the state hash
-- whose expiry is e_cur (nil when unknown), keeping it alive past tat_max
-- (the largest TAT written, µs) and for at least STATE_MARGIN_MS so its
-- cached fields survive between calls.
local function save_state(skey, fields, e_cur, tat_max, now)
  if #fields == 0 then return end
  local need = math.max(math.ceil(tat_max / 1000) + 1, math.floor(now / 1000) + STATE_MARGIN_MS)
  local e
  if not e_cur or e_cur < need then
    e = need + STATE_MARGIN_MS
    fields[#fields + 1] = 'e'
    fields[#fields + 1] = fmt(e)
  end
  redis.call('HSET', skey, unpack(fields))
  if e then redis.call('PEXPIREAT', skey, fmt(e)) end
end

-- The earliest score in the pending zset, NONE when it is empty.
local function earliest(pkey)
  local v = redis.call('ZRANGE', pkey, 0, 0, 'WITHSCORES')
  if v[2] then return tonumber(v[2]) end
  return NONE
end

-- A reservation record is one string: "p<tokens> <cost> <tpm limit>
-- <length of windows> <windows><model>" while pending — or, when levels
-- below the org have limits, "q<tokens> <cost> <tpm limit> <length of
-- windows> <length of levels> <windows><levels><model>" — then "s" once
-- settled and "x" once expired. windows are "name\tstart\tend\n" lines,
-- levels "key\trpm limit\ttpm limit\tlease\n" lines (escaped keys and names
-- cannot hold tabs or newlines; lease is 1 when the level holds a
-- concurrency lease in its zset p:<key>); the model, free text, comes last.
local function encode_record(tok, cost, tl, windows, model, levels)
  if levels == nil or levels == '' then
    return 'p' .. fmt(tok) .. ' ' .. fmt(cost) .. ' ' .. fmt(tl) .. ' ' .. fmt(#windows) .. ' ' .. windows .. model
  end
  return 'q' .. fmt(tok) .. ' ' .. fmt(cost) .. ' ' .. fmt(tl) .. ' ' .. fmt(#windows) .. ' ' .. fmt(#levels) .. ' ' ..
    windows .. levels .. model
end

-- The pending record in v as {tok, cost, tl, windows, model, levels}, or nil.
local function decode_record(v)
  if not v then return nil end
  local tok, cost, tl, wl, pos = string.match(v, '^p(%d+) (%d+) (%d+) (%d+) ()')
  if tok then
    wl = tonumber(wl)
    return {tonumber(tok), tonumber(cost), tonumber(tl), string.sub(v, pos, pos + wl - 1), string.sub(v, pos + wl), ''}
  end
  local ll
  tok, cost, tl, wl, ll, pos = string.match(v, '^q(%d+) (%d+) (%d+) (%d+) (%d+) ()')
  if not tok then return nil end
  wl, ll = tonumber(wl), tonumber(ll)
  return {tonumber(tok), tonumber(cost), tonumber(tl), string.sub(v, pos, pos + wl - 1),
    string.sub(v, pos + wl + ll), string.sub(v, pos + wl, pos + wl + ll - 1)}
end

-- Iterates a record's levels: key, rpm limit, tpm limit, lease (0/1).
local function record_levels(levels)
  local it = string.gmatch(levels or '', '([^\t\n]+)\t(%d+)\t(%d+)\t(%d)\n')
  return function()
    local k, rl, tl, c = it()
    if not k then return nil end
    return k, tonumber(rl), tonumber(tl), c == '1'
  end
end

-- Replaces a reservation's estimate by cost in each window listed in its
-- record, records first alert crossings into crossed, and returns name,
-- start, end, spent, reserved of each window, one flat list (a table per
-- window, and its conversion to a reply, cost more than the charge). A
-- window's hash keeps the expiry it got at creation; one is set only if
-- the hash has vanished.
local function charge(prefix, windows, est, cost, alerts, retention_s, crossed)
  local out, n = {}, 0
  -- The levels' budgets share windows: each window's key suffix and
  -- expiry are computed once.
  local sfx, exp = {}, {}
  local scost, sest = fmt(cost), fmt(-est)
  for name, s, e in string.gmatch(windows or '', '([^\t\n]+)\t(%d+)\t(%d+)\n') do
    if not sfx[s] then sfx[s] = ':' .. fmt(math.floor(tonumber(s) / 1000000)) end
    if not exp[e] then exp[e] = fmt(math.floor(tonumber(e) / 1000000) + retention_s) end
    local bkey, expire_at = prefix .. 'b:' .. name .. sfx[s], exp[e]
    -- HINCRBY answers the new integers: no parsing or formatting here.
    local spent = redis.call('HINCRBY', bkey, 'spent', scost)
    local reserved = redis.call('HINCRBY', bkey, 'reserved', sest)
    -- Nothing else there: the hash has just been created (it had vanished)
    -- or held only this reservation. The expiry is the one the window's
    -- hash always gets, so setting it again is harmless.
    if spent == cost and reserved == -est then redis.call('EXPIREAT', bkey, expire_at) end
    local list = alerts[name]
    if list then
      local akey = prefix .. 'a:' .. name .. sfx[s]
      local added = false
      for _, a in ipairs(list) do
        if spent >= a and redis.call('SADD', akey, fmt(a)) == 1 then
          crossed[#crossed + 1] = {name, s, e, a, spent}
          added = true
        end
      end
      if added then redis.call('EXPIREAT', akey, expire_at) end
    end
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = name, s, e, spent, reserved
    n = n + 5
  end
  return out
end

-- Keeps a level's lease zset until at least until_ms (+ a minute), never
-- shortening the life a longer lease gave it. Returns a lower bound of the
-- key's expiry (ms) after the call.
local function keep_until(key, until_ms, now)
  local ttl = redis.call('PTTL', key)
  local now_ms = math.floor(now / 1000)
  if ttl < 0 or now_ms + ttl < until_ms then
    redis.call('PEXPIREAT', key, fmt(until_ms + 60000))
    return until_ms + 60000
  end
  return now_ms + ttl - 1
end

-- Ends a reservation: its lease leaves the pending zset and the zset of
-- every level it holds one in (levels as in its record).
local function finish(prefix, pkey, rkey, id, state, keep_ms, levels)
  redis.call('ZREM', pkey, id)
  for k, _, _, lease in record_levels(levels) do
    if lease then redis.call('ZREM', prefix .. 'p:' .. k, id) end
  end
  redis.call('SET', rkey, state, 'PX', fmt(keep_ms))
end

-- Charges every reservation whose expiry has passed at its estimate, up to
-- limit, oldest first; appends {id, model, cost} to expired. Returns whether
-- it expired the reservation mine.
local function sweep(prefix, pkey, now, limit, alerts, retention_s, keep_ms, expired, crossed, mine)
  local hit = false
  local ids = redis.call('ZRANGEBYSCORE', pkey, '-inf', fmt(now), 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local rkey = prefix .. 'r:' .. id
    local rec = decode_record(redis.call('GET', rkey))
    if rec then
      charge(prefix, rec[4], rec[2], rec[2], alerts, retention_s, crossed)
      finish(prefix, pkey, rkey, id, 'x', keep_ms, rec[6])
      expired[#expired + 1] = {id, rec[5], rec[2]}
      if id == mine then hit = true end
    else
      redis.call('ZREM', pkey, id)
    end
  end
  return hit
end
