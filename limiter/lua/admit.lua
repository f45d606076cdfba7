-- Admit: decide every dimension from reads only; on a denial return without
-- a single write (not even the sweep). On allow, create the record (SET NX,
-- the duplicate check of the allowed path), sweep expired reservations if
-- any can exist, and reserve everything.
-- KEYS: 1 tenant state hash, 2 pending zset (leases), 3 this request's record.
-- ARGV: 1 key prefix, 2 request id, 3 rpm limit, 4 rpm tolerance µs,
--   5 tpm limit, 6 tpm tolerance µs, 7 concurrency limit, 8 lease µs,
--   9 tokens, 10 cost, 11 model, 12 retention s, 13 settled TTL ms,
--   14 sweep limit, 15 budget count, then per budget: name, cap and three
--   windows as start µs, end µs; then the alerts block (read_alerts); then
--   the output clamp: output tokens, price per output token, minimum; then
--   the levels below the org: count, then per level: escaped key, rpm
--   limit, tpm limit, concurrency limit (the tolerances are the org's);
--   then 1 for a detached reservation (one that holds no concurrency slot:
--   batch work, kept in the zset d and swept from it), else 0.
-- Returns {now, code, rpm TAT, tpm TAT, {window, spent, reserved}...,
--   expired, crossed, output reserved (0 when denied), the denying level
--   (0 the org, else its index), {rpm TAT, tpm TAT} per level}; codes as in
--   core.go.
local prefix, id = ARGV[1], ARGV[2]
local skey, pkey, rkey = KEYS[1], KEYS[2], KEYS[3]
local now = now_us()

local rpm_l, rpm_tol = tonumber(ARGV[3]), tonumber(ARGV[4])
local tpm_l, tpm_tol = tonumber(ARGV[5]), tonumber(ARGV[6])
local conc, lease_us = tonumber(ARGV[7]), tonumber(ARGV[8])
local tokens, cost = tonumber(ARGV[9]), tonumber(ARGV[10])
local retention_s, keep_ms, sweep_limit = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])

local st = redis.call('HMGET', skey, 'r', 't', 'n', 'e', 'pe', 'nd')
local rpm_tat, tpm_tat = now, now
if rpm_l > 0 then rpm_tat = math.max(tonumber(st[1]) or now, now) end
if tpm_l > 0 then tpm_tat = math.max(tonumber(st[2]) or now, now) end
local rpm_new = rpm_tat + increment(1, rpm_l)
local tpm_new = tpm_tat + increment(tokens, tpm_l)
-- With n > now every pending member is a live lease: no sweep, and ZCARD
-- (which also tells whether the zset exists) counts the leases.
local n = tonumber(st[3])
local must_sweep = not n or n <= now

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
local alerts, oi = read_alerts(i)

-- The output clamp (limiter.clampOutput), ARGV after the alerts block:
-- requested output tokens, nano-USD per output token, minimum output. When
-- the cost does not fit the least headroom over every budget, reserve the
-- largest whole output that does, if it is at least the minimum; from here
-- on tokens and cost are what the request reserves.
local out_req, out_price, out_min = tonumber(ARGV[oi]) or 0, tonumber(ARGV[oi + 1]) or 0, tonumber(ARGV[oi + 2]) or 0
local out = out_req
if out_req > 0 and out_price > 0 and nb > 0 then
  local room = budgets[1].cap - budgets[1].spent - budgets[1].reserved
  for b = 2, nb do room = math.min(room, budgets[b].cap - budgets[b].spent - budgets[b].reserved) end
  if cost > room then
    local avail = room - (cost - out_req * out_price)
    -- A double quotient may round up to the next integer: correct it by
    -- the exact products (all below 2^53).
    local fit = math.floor(avail / out_price)
    if fit * out_price > avail then fit = fit - 1 end
    if (fit + 1) * out_price <= avail then fit = fit + 1 end
    if fit >= out_min and fit >= 0 then
      out = fit
      cost = cost - (out_req - out) * out_price
      tokens = tokens - (out_req - out)
      tpm_new = tpm_tat + increment(tokens, tpm_l)
    end
  end
end

-- The levels below the org (a team's, a user's, a key's own limits): their
-- TATs are fields r:<key>, t:<key> of the org's state hash (one HMGET), their
-- leases the zsets p:<key>, counted by score so a lease lost to a crash
-- stops counting when it expires.
local li = oi + 3
local nl = tonumber(ARGV[li]) or 0
local lv = {}
if nl > 0 then
  local names = {}
  for l = 1, nl do
    local j = li + 1 + (l - 1) * 4
    lv[l] = {key = ARGV[j], rl = tonumber(ARGV[j + 1]), tl = tonumber(ARGV[j + 2]), cl = tonumber(ARGV[j + 3])}
    names[#names + 1] = 'r:' .. lv[l].key; names[#names + 1] = 't:' .. lv[l].key
  end
  local cur = redis.call('HMGET', skey, unpack(names))
  for l = 1, nl do
    local v = lv[l]
    v.r_tat, v.t_tat = now, now
    if v.rl > 0 then v.r_tat = math.max(tonumber(cur[2 * l - 1]) or now, now) end
    if v.tl > 0 then v.t_tat = math.max(tonumber(cur[2 * l]) or now, now) end
    v.r_new, v.t_new = v.r_tat + increment(1, v.rl), v.t_tat + increment(tokens, v.tl)
    v.pkey = prefix .. 'p:' .. v.key
    v.leases = 0
    if v.cl > 0 then v.leases = redis.call('ZCOUNT', v.pkey, '(' .. fmt(now), '+inf') end
  end
end
local detached = ARGV[li + 1 + nl * 4] == '1'
local dkey = prefix .. 'd'
local nd = tonumber(st[6])
local function level_tats()
  local out = {}
  for l = 1, nl do out[l] = {lv[l].r_tat, lv[l].t_tat} end
  return out
end

local leases, pending_exists = 0, false
if not must_sweep then
  leases = redis.call('ZCARD', pkey)
  pending_exists = leases > 0
elseif conc > 0 then
  leases = redis.call('ZCOUNT', pkey, '(' .. fmt(now), '+inf')
end

local code = 0
if conc > 0 and leases >= conc then
  code = 1
elseif rpm_l > 0 and rpm_new - now > rpm_tol then
  code = 2
elseif tpm_l > 0 and tpm_new - now > tpm_tol then
  code = 3
end
local at = 0
for l = 1, nl do
  if code ~= 0 then break end
  local v = lv[l]
  if v.cl > 0 and v.leases >= v.cl then
    code = 1
  elseif v.rl > 0 and v.r_new - now > rpm_tol then
    code = 2
  elseif v.tl > 0 and v.t_new - now > tpm_tol then
    code = 3
  end
  if code ~= 0 then at = l end
end
if code == 0 then
  for b = 1, nb do
    if budgets[b].spent + budgets[b].reserved + cost > budgets[b].cap then
      code = 3 + b
      break
    end
  end
end
if code ~= 0 then
  if redis.call('EXISTS', rkey) == 1 then return {now, -1, now, now, {}, {}, {}} end
  return {now, code, rpm_tat, tpm_tat, states, {}, {}, 0, at, level_tats()}
end

local windows = {}
for b = 1, nb do
  local bt = budgets[b]
  windows[b] = bt.name .. '\t' .. fmt(bt.start_us) .. '\t' .. fmt(bt.end_us) .. '\n'
end
local keep_pending_ms = math.ceil(lease_us / 1000) + retention_s * 1000
local lines = {}
for l = 1, nl do
  local v = lv[l]
  local lease = 0
  if v.cl > 0 then lease = 1 end
  lines[l] = v.key .. '\t' .. fmt(v.rl) .. '\t' .. fmt(v.tl) .. '\t' .. lease .. '\n'
end
local rec = encode_record(tokens, cost, tpm_l, table.concat(windows), ARGV[11], table.concat(lines))
if not redis.call('SET', rkey, rec, 'NX', 'PX', fmt(keep_pending_ms)) then
  return {now, -1, now, now, {}, {}, {}} -- nothing written yet
end

local expired, crossed = {}, {}
if must_sweep then
  sweep(prefix, pkey, now, sweep_limit, alerts, retention_s, keep_ms, expired, crossed, nil)
end
if nd and nd <= now then -- detached reservations past their lease
  sweep(prefix, dkey, now, sweep_limit, alerts, retention_s, keep_ms, expired, crossed, nil)
end
local expiry = now + lease_us
if detached then
  redis.call('ZADD', dkey, fmt(expiry), id)
  -- never shortened: a batch admitted under a shorter lease must not cut
  -- the zset's life below an earlier, longer one's
  keep_until(dkey, math.floor(expiry / 1000) + retention_s * 1000, now)
else
  redis.call('ZADD', pkey, fmt(expiry), id)
end

local fields, tat_max = {}, now
if rpm_l > 0 then
  rpm_tat = rpm_new
  fields[#fields + 1] = 'r'; fields[#fields + 1] = fmt(rpm_new)
  tat_max = math.max(tat_max, rpm_new)
end
if tpm_l > 0 then
  tpm_tat = tpm_new
  fields[#fields + 1] = 't'; fields[#fields + 1] = fmt(tpm_new)
  tat_max = math.max(tat_max, tpm_new)
end
for l = 1, nl do
  local v = lv[l]
  if v.rl > 0 then
    v.r_tat = v.r_new
    fields[#fields + 1] = 'r:' .. v.key; fields[#fields + 1] = fmt(v.r_new)
    tat_max = math.max(tat_max, v.r_new)
  end
  if v.tl > 0 then
    v.t_tat = v.t_new
    fields[#fields + 1] = 't:' .. v.key; fields[#fields + 1] = fmt(v.t_new)
    tat_max = math.max(tat_max, v.t_new)
  end
  if v.cl > 0 then
    redis.call('ZADD', v.pkey, fmt(expiry), id)
    keep_until(v.pkey, math.floor(expiry / 1000), now)
  end
end
local new_n
if must_sweep then new_n = earliest(pkey) elseif detached then new_n = n else new_n = math.min(n, expiry) end
if new_n ~= n then fields[#fields + 1] = 'n'; fields[#fields + 1] = fmt(new_n) end
if detached or (nd and nd <= now) then
  local new_nd = earliest(dkey)
  if new_nd ~= nd then fields[#fields + 1] = 'nd'; fields[#fields + 1] = fmt(new_nd) end
end
-- The zset must outlive its newest lease by the retention. The sweep may
-- have emptied (deleted) it and ZCARD 0 means ZADD just created it: both
-- need an expiry whatever pe says. Otherwise extend only when pe would
-- lapse, and then by a margin, so most calls skip the PEXPIRE.
local pe, pe_need = tonumber(st[5]), math.floor(now / 1000) + keep_pending_ms
if must_sweep or not pending_exists or not pe or pe < pe_need then
  local pe_new = pe_need + math.min(retention_s * 1000, 3600000)
  redis.call('PEXPIREAT', pkey, fmt(pe_new))
  fields[#fields + 1] = 'pe'; fields[#fields + 1] = fmt(pe_new)
end
save_state(skey, fields, tonumber(st[4]), tat_max, now)

for b = 1, nb do
  local bt = budgets[b]
  states[b][3] = redis.call('HINCRBY', bt.key, 'reserved', fmt(cost))
  if #expired > 0 then -- the sweep may have charged this window
    states[b][2] = tonumber(redis.call('HGET', bt.key, 'spent')) or 0
  end
  if bt.new then -- an existing window already expires at its end + retention
    redis.call('EXPIREAT', bt.key, fmt(math.floor(bt.end_us / 1000000) + retention_s))
  end
end
return {now, 0, rpm_tat, tpm_tat, states, expired, crossed, out, 0, level_tats()}
