-- One upstream's pacing schedule (limiter/pace.go): KEYS[1] is the hash
-- tw:{up:<id>}:pace whose fields "0".."3" are the theoretical arrival times
-- (µs, Redis TIME) of requests, tokens, input and output tokens. ARGV holds,
-- per dimension, the µs this request's cost pushes the schedule and the µs
-- of burst tolerated (0: the dimension is not paced), computed by the
-- caller. All dimensions conform or nothing is written. Returns
-- {allowed, denied dimension (-1), retry µs, now, tat0..tat3 after}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = redis.call('HMGET', KEYS[1], '0', '1', '2', '3')
local tats, nxt = {}, {}
local denied, retry = -1, 0
for d = 0, 3 do
  tats[d] = tonumber(cur[d + 1]) or 0
  local inc, tol = tonumber(ARGV[1 + 2 * d]), tonumber(ARGV[2 + 2 * d])
  if tol > 0 then
    nxt[d] = math.max(tats[d], now) + inc
    local w = nxt[d] - tol - now
    if w > 0 then
      if denied < 0 then denied = d end
      retry = math.max(retry, w)
    end
  end
end
local allowed = 0
if denied < 0 then
  allowed = 1
  local fields, last = {}, now
  for d = 0, 3 do
    if nxt[d] then
      tats[d] = nxt[d]
      fields[#fields + 1] = tostring(d)
      fields[#fields + 1] = string.format('%d', nxt[d])
    end
    last = math.max(last, tats[d])
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  -- Kept until every schedule has caught up: after that a fresh schedule
  -- is the same one.
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.floor((last - now) / 1000) + 1000))
end
return {allowed, denied, string.format('%d', retry), string.format('%d', now),
  string.format('%d', tats[0]), string.format('%d', tats[1]), string.format('%d', tats[2]), string.format('%d', tats[3])}
