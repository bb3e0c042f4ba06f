-- ARGV: prefix, id, token. Returns 1, or 0 when the lease is not held.
local id = ARGV[2]
local queue, g = held(id, ARGV[3], now())
if not queue then return 0 end
redis.call("ZREM", qkey(queue, "leased"), id)
redis.call("DEL", mkey(id))
if g then unhold(id, g) end
return 1
