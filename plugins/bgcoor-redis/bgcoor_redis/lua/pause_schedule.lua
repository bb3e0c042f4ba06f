-- Pause or resume a schedule. ARGV: prefix, id, "1" (pause) or "0". Returns 1 if there is
-- such a schedule, else 0.
local key = P .. ":sched:" .. ARGV[2]
if readable(0, "HEXISTS", key, "def") == 0 then return 0 end
redis.call("HSET", key, "paused", ARGV[3])
return 1
