-- Renew: extend the leases of a tenant's pending reservations to now +
-- lease. A member already expired is left to the sweep (it is, or will be,
-- charged at its estimate); an absent one is skipped. Raising scores keeps
-- the state hash's n a valid lower bound of the earliest expiry.
-- Detached reservations (the leases Leased holds) are renewed in their own
-- zset d instead, which only needs to outlive them; the state hash's nd
-- stays a valid lower bound of their earliest expiry as scores only rise.
-- KEYS: 1 tenant state hash, 2 pending zset (the detached zset d when
--   ARGV 4 is 1).
-- ARGV: 1 lease µs, 2 retention s, 3 key prefix, 4 1 for detached
--   reservations, else 0, then request ids.
-- Returns the number of leases renewed.
local skey, pkey = KEYS[1], KEYS[2]
local now = now_us()
local lease_us, retention_s, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local expiry = now + lease_us
local detached = ARGV[4] == '1'
local n = 0
for i = 5, #ARGV do
  local s = redis.call('ZSCORE', pkey, ARGV[i])
  if s and tonumber(s) > now then
    redis.call('ZADD', pkey, 'XX', fmt(expiry), ARGV[i])
    n = n + 1
    -- Its leases at the levels below the org, if any, last as long.
    local rec = decode_record(redis.call('GET', prefix .. 'r:' .. ARGV[i]))
    if rec then
      for k, _, _, lease in record_levels(rec[6]) do
        if lease then
          local lkey = prefix .. 'p:' .. k
          redis.call('ZADD', lkey, 'XX', fmt(expiry), ARGV[i])
          keep_until(lkey, math.floor(expiry / 1000), now)
        end
      end
    end
  end
end
if n > 0 and detached then
  keep_until(pkey, math.floor(expiry / 1000) + retention_s * 1000, now)
elseif n > 0 then
  local st = redis.call('HMGET', skey, 'pe', 'e')
  local pe, pe_need = tonumber(st[1]), math.floor(expiry / 1000) + retention_s * 1000
  if not pe or pe < pe_need then
    local pe_new = pe_need + math.min(retention_s * 1000, 3600000)
    redis.call('PEXPIREAT', pkey, fmt(pe_new))
    save_state(skey, {'pe', fmt(pe_new)}, tonumber(st[2]), now, now)
  end
end
return n
