-- The response cache of one org (limiter/respcache_redis.go), all keys under
-- the org's prefix P (tw:{org}:rc:, one hash tag, one Cluster slot):
--   KEYS[1] P..m     hash: <id> -> the entry's stored size; '#bytes' the org's total;
--                    '#seq' the use counter that orders the LRU
--   KEYS[2] P..lru   zset: <id> -> its last use (a '#seq' value); lowest = least recently used
--   KEYS[3] P..exp   zset: <id> -> its expiry (ms, Redis TIME)
--   KEYS[4] P..e:<id> string: the compressed value, with the entry's TTL
-- The three index keys outlive every entry they list (PEXPIRE to the longest TTL).

-- forget drops one entry and its rows; its bytes stop counting.
local function forget(prefix, id)
  local s = redis.call('HGET', KEYS[1], id)
  if not s then
    return
  end
  redis.call('HDEL', KEYS[1], id)
  redis.call('HINCRBY', KEYS[1], '#bytes', -tonumber(s))
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('UNLINK', prefix .. 'e:' .. id)
end

local function org_bytes()
  return tonumber(redis.call('HGET', KEYS[1], '#bytes') or '0')
end
