-- One upstream's pacing schedule (limiter/pace.go): KEYS[1] is the hash
-- tw:{up:<id>}:pace whose fields are theoretical arrival times (µs, Redis
-- TIME): "0".."3" the whole schedule's requests, tokens, input and output
-- tokens, "<dim>~<group>" a lane group's. ARGV[1] is the number of slots
-- the request must fit; then per slot its field, the µs this request's
-- cost pushes it and the µs of burst tolerated, computed by the caller.
-- Every slot conforms or nothing is written. Returns {allowed, first
-- denied slot (-1, 0-based), retry µs, now, each slot's time after}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local fields = {}
for i = 1, n do fields[i] = ARGV[3 * i - 1] end
local cur = redis.call('HMGET', KEYS[1], unpack(fields))
local tats, nxt = {}, {}
local denied, retry = -1, 0
for i = 1, n do
  tats[i] = tonumber(cur[i]) or 0
  local inc, tol = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  nxt[i] = math.max(tats[i], now) + inc
  local w = nxt[i] - tol - now
  if w > 0 then
    if denied < 0 then denied = i - 1 end
    retry = math.max(retry, w)
  end
end
local allowed = 0
if denied < 0 then
  allowed = 1
  local kv, last = {}, now
  for i = 1, n do
    tats[i] = nxt[i]
    kv[#kv + 1] = fields[i]
    kv[#kv + 1] = string.format('%d', nxt[i])
    last = math.max(last, nxt[i])
  end
  redis.call('HSET', KEYS[1], unpack(kv))
  -- Kept until every schedule has caught up: after that a fresh schedule
  -- is the same one. Only ever lengthened, since this request's slots may
  -- be fewer than the hash holds (another lane's group runs later).
  local ttl = math.floor((last - now) / 1000) + 1000
  if ttl > redis.call('PTTL', KEYS[1]) then
    redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
  end
end
local out = {allowed, denied, string.format('%d', retry), string.format('%d', now)}
for i = 1, n do out[#out + 1] = string.format('%d', tats[i]) end
return out
