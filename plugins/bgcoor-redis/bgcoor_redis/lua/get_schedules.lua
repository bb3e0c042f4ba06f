-- Every schedule in id order: for each, its id and either its fields (def, paused, since,
-- tick, task, buffered, fired, skipped, missed; false when absent) or, for a key that is
-- not a hash, a string saying so. ARGV: prefix.
local out = {}
for _, id in ipairs(readable({}, "ZRANGE", P .. ":sched", 0, -1)) do
  local key = P .. ":sched:" .. id
  local fields = redis.pcall("HMGET", key, "def", "paused", "since", "tick", "task", "buffered",
    "fired", "skipped", "missed")
  if fields.err then fields = key .. " is not a hash" end
  out[#out + 1] = id
  out[#out + 1] = fields
end
return out
