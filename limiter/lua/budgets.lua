-- Budgets: read-only (prepended with common.lua).
-- KEYS: 1 any key of the tenant (routing only).
-- ARGV: 1 key prefix, 2 budget count, then per budget: name and three windows
-- as start µs, end µs. Returns {now, {window, spent, reserved, degraded}...}.
local now = now_us()
local out = {}
local i = 3
for b = 1, tonumber(ARGV[2]) do
  local w, start_us = pick_window(i + 1, now)
  local v = redis.call('HMGET', budget_key(ARGV[1], ARGV[i], start_us), 'spent', 'reserved', 'degraded')
  out[b] = {w, tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0}
  i = i + 7
end
return {now, out}
