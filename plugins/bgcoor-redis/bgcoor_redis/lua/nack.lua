-- ARGV: prefix, id, token, delay seconds, new body ("" keeps the old one).
-- Returns 1, or 0 when the lease is not held.
local id, delay, body = ARGV[2], tonumber(ARGV[4]), ARGV[5]
local t = now()
local queue, g = held(id, ARGV[3], t)
if not queue then return 0 end
unlease(queue, id)
if g then unhold(id, g) end -- (the new body, if any, keeps the gate: it is a field apart)
unstart_record(id, ARGV[3]) -- a hand-back: the record is no longer running
if body ~= "" then redis.call("HSET", mkey(id), "b", body) end
if delay > 0 then
  rescore(id)
  local later = qkey(queue, "later")
  fixed(later, "ZADD", later, t + delay, id)
else
  requeue(queue, id)
  wake(queue)
end
return 1
