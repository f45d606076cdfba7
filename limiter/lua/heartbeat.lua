-- Heartbeat: register a replica as live and read the store's epoch,
-- writing it when absent (first use, or the data was lost).
-- KEYS: 1 epoch string, 2 replicas zset (replica -> last heartbeat ms).
-- ARGV: 1 replica id, 2 ttl ms, 3 epoch to write when absent.
-- Returns {epoch, created 0/1, live replicas}.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local created = 0
if redis.call('SET', KEYS[1], ARGV[3], 'NX') then created = 1 end
local epoch = redis.call('GET', KEYS[1])
redis.call('ZADD', KEYS[2], string.format('%d', now_ms), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('(%d', now_ms - ttl))
redis.call('PEXPIRE', KEYS[2], string.format('%d', 2 * ttl))
return {epoch, created, redis.call('ZCARD', KEYS[2])}
