-- ARGV: prefix, id, token, lease seconds. Returns 1, or 0 when the lease is not held.
local id = ARGV[2]
local t = now()
local queue, g = held(id, ARGV[3], t)
if not queue then return 0 end
local deadline = t + tonumber(ARGV[4])
redis.call("ZADD", qkey(queue, "leased"), "XX", deadline, id)
local gate = g and gate_of(g)
if gate and gate.concurrency then -- an extended lease keeps its slot, as long
  redis.pcall("ZADD", gkey(gate.key, "held"), "XX", deadline, id)
end
return 1
