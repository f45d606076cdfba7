-- Rebind: give a pending detached reservation (batch work) a new id,
-- keeping its record, windows and expiry; a no-op (0) when the old id is
-- not a pending detached reservation or the new one is taken.
-- KEYS: 1 the old record, 2 the new record.
-- ARGV: 1 key prefix, 2 old id, 3 new id.
-- Returns 1 when renamed, else 0.
local v = redis.call('GET', KEYS[1])
if not decode_record(v) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local dkey = ARGV[1] .. 'd'
local score = redis.call('ZSCORE', dkey, ARGV[2])
if not score then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
redis.call('SET', KEYS[2], v, 'PX', ttl)
redis.call('DEL', KEYS[1])
redis.call('ZREM', dkey, ARGV[2])
redis.call('ZADD', dkey, score, ARGV[3])
return 1
