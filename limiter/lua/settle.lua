-- Settle: a no-op without a pending record; otherwise sweep if anything can
-- have expired, then replace the estimate by the actual charge in TPM and
-- every reserved window, and release the lease.
-- KEYS: 1 tenant state hash, 2 pending zset (leases), 3 this request's record
--   (and the detached zset d under the same prefix).
-- ARGV: 1 key prefix, 2 request id, 3 tokens, 4 cost, 5 retention s,
--   6 settled TTL ms, 7 sweep limit, then the alerts block (read_alerts),
--   then the calibration sample: model ('' for none), estimated, measured.
-- Returns {now, settled 1 / finished 0 / unknown -1, {name, start, end, spent, reserved, ...},
--   expired, crossed[, {factor, samples}]}.
local prefix, id = ARGV[1], ARGV[2]
local skey, pkey, rkey = KEYS[1], KEYS[2], KEYS[3]
local now = now_us()
local raw = redis.call('GET', rkey)
if not raw then return {now, -1, {}, {}, {}} end -- no record at all: unknown or lost
local rec = decode_record(raw)
if not rec then return {now, 0, {}, {}, {}} end
local tokens, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local retention_s, keep_ms, sweep_limit = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local alerts, ci = read_alerts(8)

-- One HMGET of the org's state and the tokens/min TAT of every level
-- below it the record names with such a limit (fields t:<key>).
local names, lims = {'t', 'n', 'e', 'nd'}, {}
for k, _, ltl in record_levels(rec[6]) do
  if ltl > 0 then names[#names + 1] = 't:' .. k; lims[#lims + 1] = ltl end
end
local st = redis.call('HMGET', skey, unpack(names))
local n = tonumber(st[2])
local fields, tat_max = {}, now
local expired, crossed = {}, {}
if not n or n <= now then
  local mine = sweep(prefix, pkey, now, sweep_limit, alerts, retention_s, keep_ms, expired, crossed, id)
  if mine then -- expired just now, charged at its estimate by the sweep
    save_state(skey, {'n', fmt(earliest(pkey))}, tonumber(st[3]), tat_max, now)
    return {now, 0, {}, expired, crossed}
  end
end

-- Detached reservations (batch work) live in the zset d: sweep those past
-- their lease, and this one leaves it when it settles.
local dkey, nd = prefix .. 'd', tonumber(st[4])
if nd then
  if nd <= now then
    local mine = sweep(prefix, dkey, now, sweep_limit, alerts, retention_s, keep_ms, expired, crossed, id)
    if mine then
      save_state(skey, {'nd', fmt(earliest(dkey))}, tonumber(st[3]), tat_max, now)
      return {now, 0, {}, expired, crossed}
    end
  end
  redis.call('ZREM', dkey, id)
  fields[#fields + 1] = 'nd'; fields[#fields + 1] = fmt(earliest(dkey))
end
local tl = rec[3]
if tl > 0 then
  local diff = increment(tokens, tl) - increment(rec[1], tl)
  local tat = math.max(tonumber(st[1]) or now, now)
  tat_max = math.max(tat + diff, now)
  fields[#fields + 1] = 't'; fields[#fields + 1] = fmt(tat_max)
end
-- Every level below the org with a tokens/min limit gets the same
-- correction in its own TAT (a field of the same state hash).
for j = 1, #lims do
  local diff = increment(tokens, lims[j]) - increment(rec[1], lims[j])
  local tat = math.max(math.max(tonumber(st[4 + j]) or now, now) + diff, now)
  tat_max = math.max(tat_max, tat)
  fields[#fields + 1] = names[4 + j]; fields[#fields + 1] = fmt(tat)
end
local states = charge(prefix, rec[4], rec[2], cost, alerts, retention_s, crossed)
finish(prefix, pkey, rkey, id, 's', keep_ms, rec[6])
if not n or n <= now then
  fields[#fields + 1] = 'n'; fields[#fields + 1] = fmt(earliest(pkey))
end
save_state(skey, fields, tonumber(st[3]), tat_max, now)

-- Calibration, as limiter.foldCalibration: fold measured/estimated input
-- into the model's EWMA record c:<model> (integer parts per million) and
-- return it, so the replica's next estimates use it without a round trip.
local cmodel = ARGV[ci]
if cmodel == nil or cmodel == '' then return {now, 1, states, expired, crossed} end
local SCALE, CMIN, CMAX, PRIOR, WINDOW = 1000000, 250000, 4000000, 4, 20
local ckey = prefix .. 'c:' .. cmodel
-- x is the expiry (s) last set: the record lives Retention after its last
-- settle, give or take the hour by which an EXPIRE is skipped.
local c = redis.call('HMGET', ckey, 'f', 'n', 'x')
local f, cn = tonumber(c[1]) or SCALE, tonumber(c[2]) or 0
local cest, cmeas = tonumber(ARGV[ci + 1]), tonumber(ARGV[ci + 2])
if cest > 0 and cmeas > 0 then
  local obs = math.floor(cmeas * SCALE / cest)
  obs = math.min(math.max(obs, math.floor(f / 2), CMIN), 2 * f, CMAX)
  local d = math.min(cn + PRIOR, WINDOW)
  f = math.floor((f * (d - 1) + obs + math.floor(d / 2)) / d)
  f, cn = math.min(math.max(f, CMIN), CMAX), cn + 1
end
local cx, cneed = tonumber(c[3]), math.floor(now / 1000000) + retention_s
if cx and cx >= cneed - 3600 then
  redis.call('HSET', ckey, 'f', fmt(f), 'n', fmt(cn))
else
  redis.call('HSET', ckey, 'f', fmt(f), 'n', fmt(cn), 'x', fmt(cneed))
  redis.call('EXPIREAT', ckey, fmt(cneed))
end
return {now, 1, states, expired, crossed, {f, cn}}
