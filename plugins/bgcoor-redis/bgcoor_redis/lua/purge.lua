-- Delete every waiting (ready or scheduled) message of a queue; reserved ones stay.
-- ARGV: prefix, queue. Returns how many were deleted.
local queue = ARGV[2]
local count = 0
for _, kind in ipairs({"ready", "later"}) do
  local key = qkey(queue, kind)
  for _, id in ipairs(readable({}, "ZRANGE", key, 0, -1)) do
    redis.call("DEL", mkey(id))
    count = count + 1
  end
  redis.call("DEL", key)
end
return count
