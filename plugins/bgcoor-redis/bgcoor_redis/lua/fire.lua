-- Fire (or give up) schedule ticks: the rule of bgcoor_core._schedules, steps 1-6, for
-- each request in order, each one whole before the next.
-- ARGV: prefix, then 17 per request: schedule id, tick (ms), overlap (allow, skip or
-- buffer_one), missed, release ("1" or ""), then the task's record as enqueue.lua takes it
-- (id, status, token, name, queue, json; id "" when there is no task), then its message
-- (id, queue, body, priority, eta, gate; "" for none).
-- Returns one outcome per request ("fired", "skipped", ...), or for a request whose task
-- or message id is taken {"DUPLICATE", id} / {"DUPLICATE", id, status} as enqueue.lua
-- does; such a request changes nothing, and the others still apply.
-- " status " for each status in which the last task counts as still going (generated
-- from bgcoor_core.kit.SCHEDULE_ACTIVE), and those of them waiting to run.
local ACTIVE = "@SCHEDULE_ACTIVE@"
local WAITING = "@SCHEDULE_WAITING@"
local t = now()
local woken = {}

local function among(set, status)
  return status and not string.find(status, " ", 1, true)
    and string.find(set, " " .. status .. " ", 1, true)
end

-- The stored status of the schedule's last task; nil when it has none or it is gone.
local function last_status(task_id)
  if not task_id then return nil end
  local s = redis.pcall("HGET", tkey(task_id), "s")
  if type(s) ~= "string" then return nil end -- gone, or not a hash (not active either way)
  return s
end

-- A counter one higher; one that is not an integer (written by something else) restarts.
local function bump(key, field, by)
  if type(redis.pcall("HINCRBY", key, field, by)) == "table" then
    redis.call("HSET", key, field, by)
  end
end

-- Why the request's task cannot be enqueued (its record or message id is taken), or nil.
local function taken(a)
  local rid, mid = ARGV[a + 5], ARGV[a + 11]
  if redis.call("EXISTS", mkey(mid)) == 1 then return {"DUPLICATE", mid} end
  local old = old_record(rid)
  if old then return {"DUPLICATE", rid, old.bad and "unreadable: " .. old.bad or old[1]} end
  return nil
end

-- Store the request's record and push its message, as enqueue.lua does.
local function enqueue(a)
  write_record(nil, ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9],
    ARGV[a + 10], 0, t)
  local m = a + 11
  local id, queue, prio, eta = ARGV[m], ARGV[m + 1], tonumber(ARGV[m + 3]), ARGV[m + 4]
  local score = (MAX_PRIORITY - prio) * SPAN + next_seq(1)
  redis.call("HSET", mkey(id), "q", queue, "b", ARGV[m + 2], "p", prio, "o", score, "d", 0, "l", 0)
  if ARGV[m + 5] ~= "" then redis.call("HSET", mkey(id), "g", ARGV[m + 5]) end
  if type(redis.pcall("SADD", QUEUES, queue)) == "table" then fixed(QUEUES, "SADD", QUEUES, queue) end
  local key = qkey(queue, "ready")
  if eta ~= "" and tonumber(eta) > t then
    key, score = qkey(queue, "later"), eta
  else
    woken[queue] = true
  end
  if type(redis.pcall("ZADD", key, score, id)) == "table" then fixed(key, "ZADD", key, score, id) end
end

-- The outcome for request `a` without writing anything, and the schedule's fields.
local function decide(a, key)
  local st = redis.pcall("HMGET", key, "def", "paused", "tick", "task", "buffered")
  if st.err or not st[1] then return "removed" end
  if st[2] == "1" then return "paused" end
  local has_task = ARGV[a + 5] ~= ""
  local last = last_status(st[4])
  if ARGV[a + 4] == "1" then -- a buffered tick's turn
    if not st[5] then return "already" end
    if among(ACTIVE, last) then return "buffered" end
    return has_task and "fired" or "already"
  end
  local tick = tonumber(st[3])
  if tick and tonumber(ARGV[a + 1]) <= tick then return "already" end
  if not has_task then return "advanced" end
  local overlap = ARGV[a + 2]
  if overlap ~= "allow" and among(ACTIVE, last) then
    if overlap == "skip" or among(WAITING, last) or st[5] then return "skipped" end
    return "buffer"
  end
  return "fired"
end

local function fire(a)
  local key = P .. ":sched:" .. ARGV[a]
  local outcome = decide(a, key)
  if outcome == "removed" or outcome == "paused" or outcome == "already" then return outcome end
  local release = ARGV[a + 4] == "1"
  if outcome == "fired" then
    local refused = taken(a)
    if refused then return refused end
  end
  if not release then
    redis.call("HSET", key, "tick", ARGV[a + 1])
    local missed = tonumber(ARGV[a + 3])
    if missed > 0 then bump(key, "missed", missed) end
  end
  if outcome == "skipped" then
    bump(key, "skipped", 1)
  elseif outcome == "buffer" then
    redis.call("HSET", key, "buffered", ARGV[a + 1])
    outcome = "buffered"
  elseif outcome == "fired" then
    enqueue(a)
    if release then redis.call("HDEL", key, "buffered") end
    redis.call("HSET", key, "task", ARGV[a + 5])
    bump(key, "fired", 1)
  end
  return outcome
end

local out = {}
for a = 2, #ARGV, 17 do out[#out + 1] = fire(a) end
for queue in pairs(woken) do wake(queue) end
return out
