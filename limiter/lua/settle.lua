-- Settle: a no-op without a pending record; otherwise sweep, then replace
-- the estimate by the actual charge in TPM and every reserved window, and
-- release the lease.
-- KEYS: 1 tpm TAT, 2 pending zset (leases), 3 this request's record.
-- ARGV: 1 key prefix, 2 request id, 3 tokens, 4 cost, 5 retention s,
--   6 settled TTL ms, 7 sweep limit, then the alerts block (read_alerts).
-- Returns {now, settled 0/1, {name, start, end, spent, reserved}...,
--   expired, crossed}.
local prefix, id = ARGV[1], ARGV[2]
local now = now_us()
if redis.call('HGET', KEYS[3], 'st') ~= 'p' then return {now, 0, {}, {}, {}} end
local tokens, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local retention_s, keep_ms, sweep_limit = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local alerts = read_alerts(8)

local expired, crossed = {}, {}
sweep(prefix, KEYS[2], now, sweep_limit, alerts, retention_s, keep_ms, expired, crossed)
local rec = redis.call('HMGET', KEYS[3], 'st', 'tok', 'cost', 'tl', 'b')
if rec[1] ~= 'p' then return {now, 0, {}, expired, crossed} end -- expired just now

local tl = tonumber(rec[4])
if tl > 0 then
  local diff = increment(tokens, tl) - increment(tonumber(rec[2]), tl)
  local v = redis.call('GET', KEYS[1])
  local tat = now
  if v then tat = math.max(tonumber(v), now) end
  set_tat(KEYS[1], math.max(tat + diff, now), now)
end
local states = charge(prefix, rec[5], tonumber(rec[3]), cost, alerts, retention_s, crossed)
finish(KEYS[2], KEYS[3], id, 's', keep_ms)
return {now, 1, states, expired, crossed}
