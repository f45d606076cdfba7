-- Cancel: undo an admission whose reply was lost, whatever order the late
-- admission and this call arrive in. Without a record, leave a tombstone
-- ("c"), which makes the admission a no-op (its SET NX fails) if it arrives
-- later. With a pending record, release everything it reserved: its
-- estimate leaves every window, its lease is released, its tokens and the
-- requests it counted leave the GCRA buckets. A finished record is left alone.
-- KEYS: 1 tenant state hash, 2 pending zset, 3 this request's record.
-- ARGV: 1 key prefix, 2 request id, 3 rpm limit, 4 tombstone ms,
--   5 retention s, 6 how many requests the admission stood for (its count,
--   as admit.lua's ARGV[19]).
-- Returns {now, released 0/1}.
local prefix, id = ARGV[1], ARGV[2]
local skey, pkey, rkey = KEYS[1], KEYS[2], KEYS[3]
local now = now_us()
local keep_ms, retention_s = tonumber(ARGV[4]), tonumber(ARGV[5])
local count = tonumber(ARGV[6])
local v = redis.call('GET', rkey)
if not v then
  redis.call('SET', rkey, 'c', 'PX', fmt(keep_ms))
  return {now, 0}
end
local rec = decode_record(v)
if not rec then return {now, 0} end
charge(prefix, rec[4], rec[2], 0, {}, retention_s, {})
local st = redis.call('HMGET', skey, 'r', 't', 'e')
local fields, tat_max = {}, now
local rpm_l = tonumber(ARGV[3])
if rpm_l > 0 and st[1] then
  local tat = math.max(math.max(tonumber(st[1]), now) - count * increment(1, rpm_l), now)
  fields[#fields + 1] = 'r'; fields[#fields + 1] = fmt(tat)
  tat_max = math.max(tat_max, tat)
end
local tl = rec[3]
if tl > 0 and st[2] then
  local tat = math.max(math.max(tonumber(st[2]), now) - increment(rec[1], tl), now)
  fields[#fields + 1] = 't'; fields[#fields + 1] = fmt(tat)
  tat_max = math.max(tat_max, tat)
end
-- The levels below the org give back the requests and the tokens too.
if rec[6] ~= '' then
  local names, incs = {}, {}
  for k, lrl, ltl in record_levels(rec[6]) do
    if lrl > 0 then names[#names + 1] = 'r:' .. k; incs[#incs + 1] = count * increment(1, lrl) end
    if ltl > 0 then names[#names + 1] = 't:' .. k; incs[#incs + 1] = increment(rec[1], ltl) end
  end
  if #names > 0 then
    local cur = redis.call('HMGET', skey, unpack(names))
    for j = 1, #names do
      if cur[j] then
        local tat = math.max(math.max(tonumber(cur[j]), now) - incs[j], now)
        fields[#fields + 1] = names[j]; fields[#fields + 1] = fmt(tat)
        tat_max = math.max(tat_max, tat)
      end
    end
  end
end
redis.call('ZREM', prefix .. 'd', id) -- a detached reservation's place, if it is one
finish(prefix, pkey, rkey, id, 'c', keep_ms, rec[6])
save_state(skey, fields, tonumber(st[3]), tat_max, now)
return {now, 1}
