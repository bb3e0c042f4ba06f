-- ARGV: prefix, queue. Returns {ready, scheduled, reserved, dead}; a message whose eta or
-- lease deadline has passed counts as ready, one parked for a concurrency slot as scheduled.
local queue = ARGV[2]
local t = now()
local later, leased = qkey(queue, "later"), qkey(queue, "leased")
-- A set holding a value of the wrong type counts as empty (see `readable`).
local due = readable(0, "ZCOUNT", later, "-inf", t) + readable(0, "ZCOUNT", leased, "-inf", t)
return {
  readable(0, "ZCARD", qkey(queue, "ready")) + due,
  readable(0, "ZCOUNT", later, after(t), "+inf") + readable(0, "ZCARD", qkey(queue, "parked")),
  readable(0, "ZCOUNT", leased, after(t), "+inf"),
  readable(0, "ZCARD", qkey(queue, "dead")),
}
