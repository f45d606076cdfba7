-- Reconcile: charge spend that was decided without the store (or that the
-- store lost) into budget windows, once: the marker record of the charge's
-- id (and, if given, the record of the original request) makes a repeat a
-- no-op.
-- KEYS: 1 this charge's marker record, 2 the original request's record
--   (or the marker again).
-- ARGV: 1 key prefix, 2 cost, 3 degraded 0/1, 4 marker ms, 5 retention s,
--   6 window count, then per window: name, start µs, end µs; then the
--   alerts block (read_alerts).
-- Returns {now, applied 0/1, {name, start, end, spent, reserved, ...}, crossed}.
local prefix = ARGV[1]
local now = now_us()
if redis.call('EXISTS', KEYS[1]) == 1 or (KEYS[2] ~= KEYS[1] and redis.call('EXISTS', KEYS[2]) == 1) then
  return {now, 0, {}, {}}
end
local cost, degraded = tonumber(ARGV[2]), ARGV[3] == '1'
local keep_ms, retention_s = tonumber(ARGV[4]), tonumber(ARGV[5])
local nw = tonumber(ARGV[6])
local windows, i = {}, 7
for w = 1, nw do
  windows[w] = ARGV[i] .. '\t' .. ARGV[i + 1] .. '\t' .. ARGV[i + 2] .. '\n'
  if degraded then
    redis.call('HINCRBY', budget_key(prefix, ARGV[i], tonumber(ARGV[i + 1])), 'degraded', fmt(cost))
  end
  i = i + 3
end
local alerts = read_alerts(i)
local crossed = {}
local states = charge(prefix, table.concat(windows), 0, cost, alerts, retention_s, crossed)
redis.call('SET', KEYS[1], 'd', 'PX', fmt(keep_ms))
return {now, 1, states, crossed}
