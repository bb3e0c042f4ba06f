-- Remove a schedule. ARGV: prefix, id. Returns 1 if there was one, else 0.
local id = ARGV[2]
readable(0, "ZREM", P .. ":sched", id)
return redis.call("DEL", P .. ":sched:" .. id)
