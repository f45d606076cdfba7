-- Settle: a no-op without a pending record; otherwise sweep if anything can
-- have expired, then replace the estimate by the actual charge in TPM and
-- every reserved window, and release the lease.
-- KEYS: 1 tenant state hash, 2 pending zset (leases), 3 this request's record.
-- ARGV: 1 key prefix, 2 request id, 3 tokens, 4 cost, 5 retention s,
--   6 settled TTL ms, 7 sweep limit, then the alerts block (read_alerts).
-- Returns {now, settled 1 / finished 0 / unknown -1, {name, start, end, spent, reserved}...,
--   expired, crossed}.
local prefix, id = ARGV[1], ARGV[2]
local skey, pkey, rkey = KEYS[1], KEYS[2], KEYS[3]
local now = now_us()
local raw = redis.call('GET', rkey)
if not raw then return {now, -1, {}, {}, {}} end -- no record at all: unknown or lost
local rec = decode_record(raw)
if not rec then return {now, 0, {}, {}, {}} end
local tokens, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local retention_s, keep_ms, sweep_limit = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local alerts = read_alerts(8)

local st = redis.call('HMGET', skey, 't', 'n', 'e')
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

local tl = rec[3]
if tl > 0 then
  local diff = increment(tokens, tl) - increment(rec[1], tl)
  local tat = math.max(tonumber(st[1]) or now, now)
  tat_max = math.max(tat + diff, now)
  fields[#fields + 1] = 't'; fields[#fields + 1] = fmt(tat_max)
end
local states = charge(prefix, rec[4], rec[2], cost, alerts, retention_s, crossed)
finish(pkey, rkey, id, 's', keep_ms)
if not n or n <= now then
  fields[#fields + 1] = 'n'; fields[#fields + 1] = fmt(earliest(pkey))
end
save_state(skey, fields, tonumber(st[3]), tat_max, now)
return {now, 1, states, expired, crossed}
