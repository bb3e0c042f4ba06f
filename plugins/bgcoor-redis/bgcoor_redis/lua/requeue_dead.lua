-- Move dead letters back to their queue.
-- ARGV: prefix, queue, "all" or "ids", then the ids. Returns the ids moved.
local queue = ARGV[2]
local dead = qkey(queue, "dead")
local ids = {}
if ARGV[3] == "all" then
  ids = readable({}, "ZRANGE", dead, 0, -1)
else
  for a = 4, #ARGV do ids[#ids + 1] = ARGV[a] end
end
local moved = {}
for _, id in ipairs(ids) do
  -- a dead letter whose message key is not a hash stays where it is
  local kind = redis.call("TYPE", mkey(id))["ok"]
  if (kind == "hash" or kind == "none") and readable(0, "ZREM", dead, id) == 1 then
    redis.call("HSET", mkey(id), "d", 0, "l", 0)
    redis.call("HDEL", mkey(id), "r", "x", "a") -- its gate (g) stays: it is limited again
    requeue(queue, id)
    moved[#moved + 1] = id
  end
end
if #moved > 0 then wake(queue) end
return moved
