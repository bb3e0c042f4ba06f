-- ARGV: prefix, id, token, lease seconds. Returns 1, or 0 when the lease is not held.
local id = ARGV[2]
local t = now()
local queue = held(id, ARGV[3], t)
if not queue then return 0 end
redis.call("ZADD", qkey(queue, "leased"), "XX", t + tonumber(ARGV[4]), id)
return 1
