-- Admit: decide every dimension from reads only; on a denial return without
-- a single write (not even the sweep). On allow, create the record (SET NX,
-- the duplicate check of the allowed path), sweep expired reservations if
-- any can exist, and reserve everything.
--
-- Most of a call's cost is the script's own Lua work, not Redis commands
-- (callgrind of redis-server: number parsing, string building and table
-- churn outweigh the commands), so the caller passes what it knows once:
-- each distinct set of budget windows once (the levels' day budgets share
-- one), numbers as the strings the record keeps, and the alerts last, read
-- only when a sweep needs them.
-- KEYS: 1 tenant state hash, 2 pending zset (leases), 3 this request's record.
-- ARGV: 1 key prefix, 2 request id, 3 rpm limit, 4 rpm tolerance µs,
--   5 tpm limit, 6 tpm tolerance µs, 7 concurrency limit, 8 lease µs,
--   9 tokens, 10 cost, 11 model, 12 retention s, 13 settled TTL ms,
--   14 sweep limit; 15-17 the output clamp: output tokens, price per output
--   token, minimum; 18 1 for a detached reservation (one that holds no
--   concurrency slot: batch work, kept in the zset d and swept from it),
--   else 0; 19 how many requests the admission stands for (count single
--   increments to every rpm, as core.go requestsIncrement); 20 the levels below the org: count, then per level: escaped
--   key, rpm limit, tpm limit, concurrency limit (the tolerances are the
--   org's); then the window sets: count, then per set three windows as
--   start µs, end µs; then the budgets: count, then per budget: name, cap,
--   its window set (1-based); then the alerts block (read_alerts).
-- Returns {now, code, rpm TAT, tpm TAT, {window, spent, reserved, ...},
--   expired, crossed, output reserved (0 when denied), the denying level
--   (0 the org, else its index), {rpm TAT, tpm TAT, ...}}: the budgets' and
--   the levels' figures flat, three a budget and two a level; codes as in
--   core.go.
local prefix, id = ARGV[1], ARGV[2]
local skey, pkey, rkey = KEYS[1], KEYS[2], KEYS[3]
local now = now_us()

local rpm_l, rpm_tol = tonumber(ARGV[3]), tonumber(ARGV[4])
local tpm_l, tpm_tol = tonumber(ARGV[5]), tonumber(ARGV[6])
local conc, lease_us = tonumber(ARGV[7]), tonumber(ARGV[8])
local tokens, cost = tonumber(ARGV[9]), tonumber(ARGV[10])
local retention_s, keep_ms, sweep_limit = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local out_req, out_price, out_min = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local detached = ARGV[18] == '1'
local count = tonumber(ARGV[19])

-- The levels below the org (a team's, a user's, a key's own limits): their
-- TATs are fields r:<key>, t:<key> of the org's state hash, read in the
-- same HMGET as the org's own fields; their leases the zsets p:<key>,
-- counted by score so a lease lost to a crash stops counting when it
-- expires, whose expiry as last set is the field pe:<key>.
local nl = tonumber(ARGV[20])
local names = {'r', 't', 'n', 'e', 'pe', 'nd'}
local lkey, lrl, ltl, lcl = {}, {}, {}, {}
local j = 21
for l = 1, nl do
  local k = ARGV[j]
  lkey[l], lrl[l], ltl[l], lcl[l] = k, tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  names[3 * l + 4] = 'r:' .. k; names[3 * l + 5] = 't:' .. k; names[3 * l + 6] = 'pe:' .. k
  j = j + 4
end
local st = redis.call('HMGET', skey, unpack(names))

local rpm_tat, tpm_tat = now, now
if rpm_l > 0 then rpm_tat = math.max(tonumber(st[1]) or now, now) end
if tpm_l > 0 then tpm_tat = math.max(tonumber(st[2]) or now, now) end
local rpm_new = rpm_tat + count * increment(1, rpm_l)
-- With n > now every pending member is a live lease: no sweep, and ZCARD
-- (which also tells whether the zset exists) counts the leases.
local n = tonumber(st[3])
local must_sweep = not n or n <= now

-- The window sets: the window of each that contains now (as
-- limiter.pickWindow), its bounds as numbers and as the caller's strings,
-- and the key suffix of its budgets' hashes.
local nw = tonumber(ARGV[j]); j = j + 1
local widx, wstart, wend, ws, we, wsfx = {}, {}, {}, {}, {}, {}
for w = 1, nw do
  local pick = 0
  for q = 0, 2 do
    if tonumber(ARGV[j + 2 * q]) <= now then
      pick = q
      if now < tonumber(ARGV[j + 1 + 2 * q]) then break end
    end
  end
  local s, e = ARGV[j + 2 * pick], ARGV[j + 1 + 2 * pick]
  widx[w], ws[w], we[w], wstart[w], wend[w] = pick, s, e, tonumber(s), tonumber(e)
  wsfx[w] = ':' .. fmt(math.floor(wstart[w] / 1000000))
  j = j + 6
end

local nb = tonumber(ARGV[j]); j = j + 1
local bname, bcap, bset, bkey, bspent, bres, bnew, states = {}, {}, {}, {}, {}, {}, {}, {}
for b = 1, nb do
  local name, set = ARGV[j], tonumber(ARGV[j + 2])
  local key = prefix .. 'b:' .. name .. wsfx[set]
  local v = redis.call('HMGET', key, 'spent', 'reserved')
  local spent, res = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  bname[b], bcap[b], bset[b], bkey[b] = name, tonumber(ARGV[j + 1]), set, key
  bspent[b], bres[b], bnew[b] = spent, res, not v[1] and not v[2]
  states[3 * b - 2], states[3 * b - 1], states[3 * b] = widx[set], spent, res
  j = j + 3
end
local alerts_at = j

-- The output clamp (limiter.clampOutput): when the cost does not fit the
-- least headroom over every budget, reserve the largest whole output that
-- does, if it is at least the minimum; from here on tokens and cost are
-- what the request reserves.
local out = out_req
if out_req > 0 and out_price > 0 and nb > 0 then
  local room = bcap[1] - bspent[1] - bres[1]
  for b = 2, nb do room = math.min(room, bcap[b] - bspent[b] - bres[b]) end
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
    end
  end
end
local tpm_new = tpm_tat + increment(tokens, tpm_l)

local lrtat, lttat, lrnew, ltnew, lleases, lpkey = {}, {}, {}, {}, {}, {}
for l = 1, nl do
  local rt, tt = now, now
  if lrl[l] > 0 then rt = math.max(tonumber(st[3 * l + 4]) or now, now) end
  if ltl[l] > 0 then tt = math.max(tonumber(st[3 * l + 5]) or now, now) end
  lrtat[l], lttat[l] = rt, tt
  lrnew[l], ltnew[l] = rt + count * increment(1, lrl[l]), tt + increment(tokens, ltl[l])
  lleases[l] = 0
  if lcl[l] > 0 then
    lpkey[l] = prefix .. 'p:' .. lkey[l]
    lleases[l] = redis.call('ZCOUNT', lpkey[l], '(' .. fmt(now), '+inf')
  end
end
local dkey = prefix .. 'd'
local nd = tonumber(st[6])
local function level_tats()
  local r = {}
  for l = 1, nl do r[2 * l - 1], r[2 * l] = lrtat[l], lttat[l] end
  return r
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
  if lcl[l] > 0 and lleases[l] >= lcl[l] then
    code = 1
  elseif lrl[l] > 0 and lrnew[l] - now > rpm_tol then
    code = 2
  elseif ltl[l] > 0 and ltnew[l] - now > tpm_tol then
    code = 3
  end
  if code ~= 0 then at = l end
end
if code == 0 then
  for b = 1, nb do
    if bspent[b] + bres[b] + cost > bcap[b] then
      code = 3 + b
      break
    end
  end
end
if code ~= 0 then
  if redis.call('EXISTS', rkey) == 1 then return {now, -1, now, now, {}, {}, {}} end
  return {now, code, rpm_tat, tpm_tat, states, {}, {}, 0, at, level_tats()}
end

-- The record (encode_record): windows and levels are built from the
-- caller's own strings, which are the decimal integers fmt would print.
local windows = {}
for b = 1, nb do
  local set = bset[b]
  windows[b] = bname[b] .. '\t' .. ws[set] .. '\t' .. we[set] .. '\n'
end
local keep_pending_ms = math.ceil(lease_us / 1000) + retention_s * 1000
local lines = {}
for l = 1, nl do
  local lease = '0' -- a detached reservation holds no slot at any level
  if lcl[l] > 0 and not detached then lease = '1' end
  local k = 18 + 4 * l -- ARGV index of the level's rpm limit
  lines[l] = lkey[l] .. '\t' .. ARGV[k] .. '\t' .. ARGV[k + 1] .. '\t' .. lease .. '\n'
end
local rec = encode_record(tokens, cost, tpm_l, table.concat(windows), ARGV[11], table.concat(lines))
if not redis.call('SET', rkey, rec, 'NX', 'PX', fmt(keep_pending_ms)) then
  return {now, -1, now, now, {}, {}, {}} -- nothing written yet
end

local expired, crossed = {}, {}
if must_sweep or (nd and nd <= now) then
  local alerts = read_alerts(alerts_at)
  if must_sweep then
    sweep(prefix, pkey, now, sweep_limit, alerts, retention_s, keep_ms, expired, crossed, nil)
  end
  if nd and nd <= now then -- detached reservations past their lease
    sweep(prefix, dkey, now, sweep_limit, alerts, retention_s, keep_ms, expired, crossed, nil)
  end
end
local expiry = now + lease_us
local expiry_ms = math.floor(expiry / 1000)
local sexpiry = fmt(expiry)
if detached then
  redis.call('ZADD', dkey, sexpiry, id)
  -- never shortened: a batch admitted under a shorter lease must not cut
  -- the zset's life below an earlier, longer one's
  keep_until(dkey, expiry_ms + retention_s * 1000, now)
else
  redis.call('ZADD', pkey, sexpiry, id)
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
  if lrl[l] > 0 then
    lrtat[l] = lrnew[l]
    fields[#fields + 1] = names[3 * l + 4]; fields[#fields + 1] = fmt(lrnew[l])
    tat_max = math.max(tat_max, lrnew[l])
  end
  if ltl[l] > 0 then
    lttat[l] = ltnew[l]
    fields[#fields + 1] = names[3 * l + 5]; fields[#fields + 1] = fmt(ltnew[l])
    tat_max = math.max(tat_max, ltnew[l])
  end
  if lcl[l] > 0 and not detached then
    redis.call('ZADD', lpkey[l], sexpiry, id)
    -- The zset must outlive its newest lease. With no live lease before
    -- this one, no other lease's life can be cut short: set it outright.
    -- Otherwise pe:<key> is a lower bound of its expiry (only ever
    -- extended, by this script and renew's keep_until), so it is read
    -- (PTTL) only when that bound would lapse early.
    local pe_l = tonumber(st[3 * l + 6])
    local known
    if lleases[l] == 0 then
      known = expiry_ms + 60000
      redis.call('PEXPIREAT', lpkey[l], fmt(known))
    elseif not pe_l or pe_l < expiry_ms then
      known = keep_until(lpkey[l], expiry_ms, now)
    end
    if known then fields[#fields + 1] = names[3 * l + 6]; fields[#fields + 1] = fmt(known) end
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

local spent_again = #expired > 0 -- the sweep may have charged these windows
local scost = fmt(cost)
for b = 1, nb do
  states[3 * b] = redis.call('HINCRBY', bkey[b], 'reserved', scost)
  if spent_again then
    states[3 * b - 1] = tonumber(redis.call('HGET', bkey[b], 'spent')) or 0
  end
  if bnew[b] then -- an existing window already expires at its end + retention
    redis.call('EXPIREAT', bkey[b], fmt(math.floor(wend[bset[b]] / 1000000) + retention_s))
  end
end
return {now, 0, rpm_tat, tpm_tat, states, expired, crossed, out, 0, level_tats()}
