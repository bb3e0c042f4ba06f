-- Lease up to `limit` messages from the queues, earlier queues first.
-- ARGV: prefix, lease seconds, limit, token nonce, queue...
-- Returns {count, seconds until something falls due ("" if nothing will, or if something
-- was taken and more stays ready), how many stay ready, then per message
-- "<id> <queue index> <deliveries> <lost> <started>" and the body}. The n-th message's
-- lease token is the nonce followed by n; <started> is the start time stored when the task's
-- record was marked running here (Reservation.started, started_at), 0 when it was not, and
-- "!" for a message or record that cannot be read:
-- then the body's place holds what is wrong (Reservation.defect), and the message is
-- leased like any other, so that the worker dead-letters it. Few reply elements: parsing
-- them costs a client most.
-- A message with limits (field g) that may not be delivered now is parked or deferred
-- instead (see gate_passes); the reserve then looks further, so such messages never make
-- it return fewer than are deliverable.
local lease, limit, nonce = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local PROMOTE = 1000 -- bounds the work one call does; the rest waits for the next call
local HOLD_BACK = 1000 -- as PROMOTE, for messages a limit holds back
local t = now()
local out = {0, "", 0}
local taken = 0
local held_back = 0
local next_due = nil

local function promote(queue)
  local later, leased, ready = qkey(queue, "later"), qkey(queue, "leased"), qkey(queue, "ready")
  local due = redis.pcall("ZRANGEBYSCORE", later, "-inf", t, "LIMIT", 0, PROMOTE)
  if due.err then due = fixed(later, "ZRANGEBYSCORE", later, "-inf", t, "LIMIT", 0, PROMOTE) end
  for _, id in ipairs(due) do
    redis.call("ZREM", later, id)
    -- an unreadable place goes to the front, where the reserve finds what is wrong
    local o = redis.pcall("HGET", mkey(id), "o")
    fixed(ready, "ZADD", ready, order(o) or 0, id)
  end
  local lost = redis.pcall("ZRANGEBYSCORE", leased, "-inf", t, "LIMIT", 0, PROMOTE)
  if lost.err then lost = fixed(leased, "ZRANGEBYSCORE", leased, "-inf", t, "LIMIT", 0, PROMOTE) end
  for _, id in ipairs(lost) do
    unlease(queue, id) -- the lease ran out: the consumer was lost
    redis.pcall("HINCRBY", mkey(id), "l", 1) -- a count that is not a number stays for below
    local g = requeue(queue, id)
    if g then unhold(id, g) end -- a dead worker's slot is never leaked
  end
end

-- What is wrong with message hash fields m = {q, b, d, l, p, o, g, a} found in `queue`, or
-- nil; d and l are its counters as count() read them, gate its field g as gate_of read it.
local function defect_of(key, queue, m, d, l, gate)
  if not (m[1] or m[2]) then -- (a lease that ran out may have counted a loss into nothing)
    return key .. " is missing (its id was in the queue's ready, scheduled or leased set)"
  end
  if m[1] ~= queue then return key .. " has queue q " .. show(m[1]) .. ", not " .. show(queue) end
  if not m[2] then return key .. " has no body (field b)" end
  if not d then return key .. " has delivery count d " .. show(m[3]) end
  if not l then return key .. " has lost count l " .. show(m[4]) end
  if not priority(m[5]) then return key .. " has priority p " .. show(m[5]) end
  if not order(m[6]) then return key .. " has ready score o " .. show(m[6]) end
  if m[7] and not gate then
    return key .. " has gate g " .. show(m[7]) .. ", which is no rate or concurrency limit"
  end
  return nil
end

-- The rules of bgcoor_core._gates for message `id` popped from `queue` (its hash fields m
-- as take read them, its gate `gate`): true when it may be delivered, its concurrency slot
-- then held until its lease ends. Else it was parked for a slot, or deferred (scheduled,
-- marked admitted) to the rate slot it was given, and nothing else of it changed: its
-- record stays pending and its delivery count as it was.
local function gate_passes(queue, id, m, gate)
  local holders
  if gate.concurrency then
    holders = gkey(gate.key, "held")
    if readable(0, "ZCOUNT", holders, after(t), "+inf") >= gate.concurrency then
      for _, k in ipairs({gkey(gate.key, "parked"), qkey(queue, "parked")}) do
        fixed(k, "ZADD", k, m[6], id)
      end
      return false
    end
  end
  if gate.interval then
    if m[8] then
      redis.call("HDEL", mkey(id), "a") -- its slot came when it was deferred; a retry pays
    else
      local start = admit(gate.key, gate.interval, gate.burst, t)
      if start > t then
        redis.call("HSET", mkey(id), "a", "1")
        local later = qkey(queue, "later")
        fixed(later, "ZADD", later, start, id)
        return false
      end
    end
  end
  if holders then fixed(holders, "ZADD", holders, t + lease, id) end
  return true
end

-- Lease message `id` popped from `queue`'s ready set; returns its deliveries, losses and
-- body, and for a message that cannot be read what is wrong with it: it is then rewritten
-- as a sound message (an empty body if it had none, no limits if its gate is unreadable),
-- so that the worker can dead-letter it with that reason like any other. Returns nothing
-- for a message its limits hold back (gate_passes).
local function take(queue, id, token)
  local key = mkey(id)
  local m = redis.pcall("HMGET", key, "q", "b", "d", "l", "p", "o", "g", "a")
  local why, d, l, gate
  if m.err then
    why = key .. " is not a hash"
    redis.call("DEL", key)
    m = {}
  else
    d, l = count(m[3]), count(m[4])
    if m[7] then gate = gate_of(m[7]) end
    why = defect_of(key, queue, m, d, l, gate)
    if gate and not why and not gate_passes(queue, id, m, gate) then return nil end
  end
  redis.call("ZADD", qkey(queue, "leased"), t + lease, id) -- readable: promote read it
  if why then
    d = (d or 0) + 1
    redis.call("HSET", key, "q", queue, "b", m[2] or "", "d", d, "l", l or 0,
      "p", priority(m[5]) or 0, "o", order(m[6]) or 0, "t", token)
    if m[7] and not gate then redis.call("HDEL", key, "g", "a") end
    return d, 0, nil, "corrupt message: " .. why
  end
  redis.call("HSET", key, "d", d + 1, "t", token)
  return d + 1, l, m[2], nil -- l as a number: "5.0" is five, and the client wants "5"
end

local function due_in(key)
  local first = readable({}, "ZRANGE", key, 0, 0, "WITHSCORES")
  if first[2] then
    local d = tonumber(first[2]) - t
    if not next_due or d < next_due then next_due = d end
  end
end

for q = 5, #ARGV do
  local queue = ARGV[q]
  promote(queue)
  local ready = qkey(queue, "ready")
  while taken < limit do
    local want = limit - taken
    local got = redis.pcall("ZPOPMIN", ready, want)
    if got.err then got = fixed(ready, "ZPOPMIN", ready, want) end
    local stopped = 0 -- messages whose limits held them back: pop more in their place
    for i = 1, #got, 2 do
      local id = got[i]
      local token = nonce .. (taken + 1)
      local deliveries, lost, body, why = take(queue, id, token)
      if deliveries then
        taken = taken + 1
        local started = "!"
        if not why then started, why = start_record(id, token, t) end
        if why then started, body = "!", why end
        out[#out + 1] = id .. " " .. (q - 5) .. " " .. deliveries .. " " .. lost .. " " .. started
        out[#out + 1] = body
      else
        stopped = stopped + 1
      end
    end
    held_back = held_back + stopped
    if stopped == 0 or #got < 2 * want or held_back >= HOLD_BACK then break end
  end
  local left = redis.pcall("ZCARD", ready)
  if type(left) == "table" then left = fixed(ready, "ZCARD", ready) end
  if left > 0 then
    out[3] = out[3] + left
    wake(queue) -- more is ready than this consumer took: pass the baton to an idle one
  end
end
out[1] = taken
if taken == 0 or out[3] == 0 then -- the consumer waits next: tell it when to look again
  for q = 5, #ARGV do
    due_in(qkey(ARGV[q], "later")) -- a scheduled task falling due wakes no one
    if taken == 0 then due_in(qkey(ARGV[q], "leased")) end
  end
  if next_due then out[2] = fmt(math.max(next_due, 0)) end
end
return out
