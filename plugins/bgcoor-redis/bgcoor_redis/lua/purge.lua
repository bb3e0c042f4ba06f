-- Delete every waiting (ready, scheduled or parked for a concurrency slot) message of a
-- queue; reserved ones stay.
-- ARGV: prefix, queue. Returns how many were deleted.
local queue = ARGV[2]
local count = 0
for _, kind in ipairs({"ready", "later", "parked"}) do
  local key = qkey(queue, kind)
  for _, id in ipairs(readable({}, "ZRANGE", key, 0, -1)) do
    if kind == "parked" then -- out of its key's parked set too
      local g = redis.pcall("HGET", mkey(id), "g")
      local gate = type(g) == "string" and gate_of(g)
      if gate then readable(0, "ZREM", gkey(gate.key, "parked"), id) end
    end
    redis.call("DEL", mkey(id))
    count = count + 1
  end
  redis.call("DEL", key)
end
return count
