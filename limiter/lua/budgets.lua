-- Budgets: read-only. KEYS: 1 any key of the tenant (routing only).
-- ARGV: 1 key prefix, 2 budget count, then per budget: name and three windows
-- as start µs, end µs. Returns {now, {window, spent, reserved}...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local i = 3
for b = 1, tonumber(ARGV[2]) do
  local w = 0
  for j = 0, 2 do
    local s, e = tonumber(ARGV[i + 1 + 2 * j]), tonumber(ARGV[i + 2 + 2 * j])
    if s <= now then
      w = j
      if now < e then break end
    end
  end
  local start_s = string.format('%d', math.floor(tonumber(ARGV[i + 1 + 2 * w]) / 1000000))
  local v = redis.call('HMGET', ARGV[1] .. 'b:' .. ARGV[i] .. ':' .. start_s, 'spent', 'reserved')
  out[b] = {w, tonumber(v[1]) or 0, tonumber(v[2]) or 0}
  i = i + 7
end
return {now, out}
