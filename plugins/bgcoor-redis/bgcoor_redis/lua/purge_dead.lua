-- ARGV: prefix, queue. Deletes the queue's dead letters; returns how many.
local dead = qkey(ARGV[2], "dead")
local ids = readable({}, "ZRANGE", dead, 0, -1)
for _, id in ipairs(ids) do redis.call("DEL", mkey(id)) end
redis.call("DEL", dead)
return #ids
