-- Lease up to `limit` messages from the queues, earlier queues first.
-- ARGV: prefix, lease seconds, limit, token nonce, queue...
-- Returns {count, seconds until something falls due ("" if nothing will or something was
-- taken), how many stay ready, then per message
-- "<id> <queue index> <deliveries> <lost> <started>" and the body}. The n-th message's
-- lease token is the nonce followed by n; <started> is 1 when the task's record was marked
-- running here (Reservation.started). Few reply elements: parsing them costs a client most.
local lease, limit, nonce = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local PROMOTE = 1000 -- bounds the work one call does; the rest waits for the next call
local t = now()
local out = {0, "", 0}
local taken = 0
local next_due = nil

local function promote(queue)
  local later, leased = qkey(queue, "later"), qkey(queue, "leased")
  for _, id in ipairs(redis.call("ZRANGEBYSCORE", later, "-inf", t, "LIMIT", 0, PROMOTE)) do
    redis.call("ZREM", later, id)
    redis.call("ZADD", qkey(queue, "ready"), redis.call("HGET", mkey(id), "o"), id)
  end
  for _, id in ipairs(redis.call("ZRANGEBYSCORE", leased, "-inf", t, "LIMIT", 0, PROMOTE)) do
    unlease(queue, id) -- the lease ran out: the consumer was lost
    redis.call("HINCRBY", mkey(id), "l", 1)
    requeue(queue, id)
  end
end

local function due_in(key)
  local first = redis.call("ZRANGE", key, 0, 0, "WITHSCORES")
  if first[2] then
    local d = tonumber(first[2]) - t
    if not next_due or d < next_due then next_due = d end
  end
end

for q = 5, #ARGV do
  local queue = ARGV[q]
  promote(queue)
  local ready = qkey(queue, "ready")
  if taken < limit then
    local got = redis.call("ZPOPMIN", ready, limit - taken)
    for i = 1, #got, 2 do
      local id = got[i]
      local key = mkey(id)
      taken = taken + 1
      local token = nonce .. taken
      local deliveries = redis.call("HINCRBY", key, "d", 1)
      redis.call("HSET", key, "t", token)
      redis.call("ZADD", qkey(queue, "leased"), t + lease, id)
      local m = redis.call("HMGET", key, "b", "l")
      local started = start_record(id, token, t) and "1" or "0"
      out[#out + 1] = id .. " " .. (q - 5) .. " " .. deliveries .. " " .. m[2] .. " " .. started
      out[#out + 1] = m[1]
    end
  end
  local left = redis.call("ZCARD", ready)
  if left > 0 then
    out[3] = out[3] + left
    wake(queue) -- more is ready than this consumer took: pass the baton to an idle one
  end
end
out[1] = taken
if taken == 0 then
  for q = 5, #ARGV do
    due_in(qkey(ARGV[q], "later"))
    due_in(qkey(ARGV[q], "leased"))
  end
  if next_due then out[2] = fmt(math.max(next_due, 0)) end
end
return out
