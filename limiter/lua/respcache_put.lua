
-- Put: ARGV id, value, ttl (ms), max entry, max org, size (the entry's stored
-- size, StoredSize), prefix, max evictions.
-- Returns {stored 0|1, evicted, the org's bytes after}.
local id, value = ARGV[1], ARGV[2]
local ttl, max_entry, max_org = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local size, prefix, max_evict = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
if size > max_entry or size > max_org then
  return {0, 0, org_bytes()}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Entries past their TTL: Redis dropped (or is about to drop) their values;
-- their rows go too, so they stop counting against the bound.
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, max_evict)) do
  forget(prefix, gone)
end
forget(prefix, id) -- a replaced entry
local bytes = org_bytes()
local evicted = 0
while bytes + size > max_org and evicted < max_evict do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then
    break
  end
  forget(prefix, oldest[1])
  evicted = evicted + 1
  bytes = org_bytes()
end
if bytes + size > max_org and redis.call('ZCARD', KEYS[2]) == 0 then
  -- Nothing is listed, so nothing is held: a total left over from keys
  -- lost apart (an index key evicted by maxmemory) starts again at zero.
  redis.call('HSET', KEYS[1], '#bytes', 0)
  bytes = 0
end
if bytes + size > max_org then
  return {0, evicted, bytes}
end
redis.call('SET', KEYS[4], value, 'PX', ttl)
local seq = redis.call('HINCRBY', KEYS[1], '#seq', 1)
redis.call('HSET', KEYS[1], id, size)
bytes = redis.call('HINCRBY', KEYS[1], '#bytes', size)
redis.call('ZADD', KEYS[2], seq, id)
redis.call('ZADD', KEYS[3], now + ttl, id)
for i = 1, 3 do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return {1, evicted, bytes}
