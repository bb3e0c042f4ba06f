-- Hand back reservations whose reply never reached a consumer (its reserve was cancelled):
-- each goes back to its place, as if it had not been delivered.
-- A message with limits gives its concurrency slot back, and keeps the rate slot it was
-- given (it is marked admitted, as if it had not been delivered yet).
-- ARGV: prefix, then pairs id, token.
for a = 2, #ARGV, 2 do
  local id, token = ARGV[a], ARGV[a + 1]
  local key = mkey(id)
  local m = redis.pcall("HMGET", key, "q", "t", "o", "g")
  if not m.err and m[1] and m[2] == token then
    unlease(m[1], id)
    unstart_record(id, token)
    redis.pcall("HINCRBY", key, "d", -1)
    if m[4] then
      unhold(id, m[4])
      local gate = gate_of(m[4])
      if gate and gate.interval then redis.call("HSET", key, "a", "1") end
    end
    local ready = qkey(m[1], "ready")
    fixed(ready, "ZADD", ready, order(m[3]) or 0, id)
    wake(m[1])
  end
end
return 0
