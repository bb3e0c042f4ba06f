-- Store a task's outcome and ack its message in one step.
-- ARGV: prefix, id, message token, status, record token, name, queue, json, ttl (0: none).
-- Returns 0 (done), "STALE" (lease not held, or the record belongs to another lease) or
-- "TRANSITION <old status>"; nothing is written unless it is done.
local id, token = ARGV[2], ARGV[3]
local t = now()
local queue, g = held(id, token, t)
if not queue then return "STALE" end
local old = old_record(id)
local err = check_record(old, ARGV[4], ARGV[5])
if err then return err end
write_record(old, id, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), t)
redis.call("ZREM", qkey(queue, "leased"), id)
redis.call("DEL", mkey(id))
if g then unhold(id, g) end
cleanup(t, 2) -- amortised: each outcome clears at most two expired records
return 0
