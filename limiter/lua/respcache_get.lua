
-- Get: ARGV id, prefix. Returns the value and marks it most recently used,
-- or false; an entry whose value expired is forgotten on the way.
local id, prefix = ARGV[1], ARGV[2]
local v = redis.call('GET', KEYS[4])
if v then
  local seq = redis.call('HINCRBY', KEYS[1], '#seq', 1)
  redis.call('ZADD', KEYS[2], 'XX', seq, id)
  return v
end
forget(prefix, id)
return false
