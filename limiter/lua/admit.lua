-- Admit: decide every dimension from reads only; on a denial return without
-- a single write (not even the sweep). On allow, sweep expired reservations
-- and reserve everything.
-- KEYS: 1 rpm TAT, 2 tpm TAT, 3 pending zset (leases), 4 this request's record.
-- ARGV: 1 key prefix, 2 request id, 3 rpm limit, 4 rpm tolerance µs,
--   5 tpm limit, 6 tpm tolerance µs, 7 concurrency limit, 8 lease µs,
--   9 tokens, 10 cost, 11 model, 12 retention s, 13 settled TTL ms,
--   14 sweep limit, 15 budget count, then per budget: name, cap and three
--   windows as start µs, end µs; then the alerts block (read_alerts).
-- Returns {now, code, rpm TAT, tpm TAT, {window, spent, reserved}...,
--   expired, crossed}; codes as in core.go.
local prefix, id = ARGV[1], ARGV[2]
local now = now_us()
if redis.call('EXISTS', KEYS[4]) == 1 then return {now, -1, now, now, {}, {}, {}} end

local rpm_l, rpm_tol = tonumber(ARGV[3]), tonumber(ARGV[4])
local tpm_l, tpm_tol = tonumber(ARGV[5]), tonumber(ARGV[6])
local conc, lease_us = tonumber(ARGV[7]), tonumber(ARGV[8])
local tokens, cost = tonumber(ARGV[9]), tonumber(ARGV[10])
local retention_s, keep_ms, sweep_limit = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])

local function tat(key)
  local v = redis.call('GET', key)
  if v then return math.max(tonumber(v), now) end
  return now
end
local rpm_tat, tpm_tat = now, now
if rpm_l > 0 then rpm_tat = tat(KEYS[1]) end
if tpm_l > 0 then tpm_tat = tat(KEYS[2]) end
local rpm_new = rpm_tat + increment(1, rpm_l)
local tpm_new = tpm_tat + increment(tokens, tpm_l)

local nb = tonumber(ARGV[15])
local budgets, states = {}, {}
local i = 16
for b = 1, nb do
  local w, start_us, end_us = pick_window(i + 2, now)
  local key = budget_key(prefix, ARGV[i], start_us)
  local v = redis.call('HMGET', key, 'spent', 'reserved')
  budgets[b] = {name = ARGV[i], cap = tonumber(ARGV[i + 1]), start_us = start_us, end_us = end_us, key = key,
    spent = tonumber(v[1]) or 0, reserved = tonumber(v[2]) or 0, new = not v[1] and not v[2]}
  states[b] = {w, budgets[b].spent, budgets[b].reserved}
  i = i + 8
end
local alerts = read_alerts(i)

local code = 0
if conc > 0 and redis.call('ZCOUNT', KEYS[3], '(' .. fmt(now), '+inf') >= conc then
  code = 1
elseif rpm_l > 0 and rpm_new - now > rpm_tol then
  code = 2
elseif tpm_l > 0 and tpm_new - now > tpm_tol then
  code = 3
else
  for b = 1, nb do
    if budgets[b].spent + budgets[b].reserved + cost > budgets[b].cap then
      code = 3 + b
      break
    end
  end
end
if code ~= 0 then return {now, code, rpm_tat, tpm_tat, states, {}, {}} end

local expired, crossed = {}, {}
sweep(prefix, KEYS[3], now, sweep_limit, alerts, retention_s, keep_ms, expired, crossed)
if rpm_l > 0 then set_tat(KEYS[1], rpm_new, now); rpm_tat = rpm_new end
if tpm_l > 0 then set_tat(KEYS[2], tpm_new, now); tpm_tat = tpm_new end
local expiry = now + lease_us
local keep_pending_ms = fmt(math.ceil(lease_us / 1000) + retention_s * 1000)
redis.call('ZADD', KEYS[3], fmt(expiry), id)
redis.call('PEXPIRE', KEYS[3], keep_pending_ms)
local windows = {}
for b = 1, nb do
  local bt = budgets[b]
  states[b][3] = redis.call('HINCRBY', bt.key, 'reserved', fmt(cost))
  if #expired > 0 then -- the sweep may have charged this window
    states[b][2] = tonumber(redis.call('HGET', bt.key, 'spent')) or 0
  end
  if bt.new then -- an existing window already expires at its end + retention
    redis.call('EXPIREAT', bt.key, fmt(math.floor(bt.end_us / 1000000) + retention_s))
  end
  windows[b] = bt.name .. '\t' .. fmt(bt.start_us) .. '\t' .. fmt(bt.end_us) .. '\n'
end
redis.call('HSET', KEYS[4], 'st', 'p', 'tok', fmt(tokens), 'cost', fmt(cost), 'tl', fmt(tpm_l),
  'model', ARGV[11], 'b', table.concat(windows))
redis.call('PEXPIRE', KEYS[4], keep_pending_ms)
return {now, 0, rpm_tat, tpm_tat, states, expired, crossed}
