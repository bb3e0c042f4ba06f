-- ARGV: prefix, id, token, reason, new body ("" keeps the old one).
-- Returns 1, or 0 when the lease is not held.
local id, reason, body = ARGV[2], ARGV[4], ARGV[5]
local t = now()
local queue, g = held(id, ARGV[3], t)
if not queue then return 0 end
unlease(queue, id)
if g then unhold(id, g) end -- the dead letter keeps its gate for requeue_dead
local key = mkey(id)
if body ~= "" then redis.call("HSET", key, "b", body) end
redis.call("HSET", key, "r", reason, "x", fmt(t))
local dead = qkey(queue, "dead")
fixed(dead, "ZADD", dead, t, id)
return 1
