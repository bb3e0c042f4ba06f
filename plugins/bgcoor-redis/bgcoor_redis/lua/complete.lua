-- Store tasks' outcomes and ack their messages, each task in the same step as its ack.
-- ARGV: prefix, then 8 per task: id, message token, status, record token, name, queue,
-- json, ttl (0: none). Returns a reply per task, in order: 0 (done), "STALE" (lease not
-- held, or the record belongs to another lease) or "TRANSITION <old status>"; nothing of a
-- task is written unless it is done. Outcomes that arrive together share a call (one
-- script run, not one per task: see _backend.py).
local t = now()
local out = {}
for a = 2, #ARGV, 8 do
  local id, token = ARGV[a], ARGV[a + 1]
  local queue, g = held(id, token, t)
  local reply = "STALE"
  if queue then
    local old = old_record(id)
    reply = check_record(old, ARGV[a + 2], ARGV[a + 3])
    if not reply then
      write_record(old, id, ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6],
        tonumber(ARGV[a + 7]), t)
      redis.call("ZREM", qkey(queue, "leased"), id)
      redis.call("DEL", mkey(id))
      if g then unhold(id, g) end
      reply = 0
    end
  end
  out[#out + 1] = reply
end
cleanup(t, 2 * #out) -- amortised: each outcome clears at most two expired records
return out
