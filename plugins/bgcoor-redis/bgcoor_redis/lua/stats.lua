-- ARGV: prefix, queue. Returns {ready, scheduled, reserved, dead}; a message whose eta or
-- lease deadline has passed counts as ready.
local queue = ARGV[2]
local t = now()
local later, leased = qkey(queue, "later"), qkey(queue, "leased")
local due = redis.call("ZCOUNT", later, "-inf", t) + redis.call("ZCOUNT", leased, "-inf", t)
return {
  redis.call("ZCARD", qkey(queue, "ready")) + due,
  redis.call("ZCOUNT", later, after(t), "+inf"),
  redis.call("ZCOUNT", leased, after(t), "+inf"),
  redis.call("ZCARD", qkey(queue, "dead")),
}
