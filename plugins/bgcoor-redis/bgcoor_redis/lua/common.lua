-- Shared by every script (prepended by _scripts.py). ARGV[1] is the key prefix.
-- Keys are built here rather than passed in KEYS: a reserve pops ids it cannot know in
-- advance. That is fine on a standalone Redis (the supported deployment), not on a cluster.
local P = ARGV[1]
local SEQ = P .. ":seq"
local QUEUES = P .. ":queues"
local ALL = P .. ":i:all"
local EXP = P .. ":i:exp"
local EXPMETA = P .. ":i:expmeta"
-- A ready score is (MAX_PRIORITY - priority) * SPAN + sequence: higher priority first,
-- FIFO within a priority, exact in a double as long as the sequence stays below SPAN.
local MAX_PRIORITY = @MAX_PRIORITY@
local SPAN = @SPAN@
-- " old>new " for every allowed status change, and " status " for each final status
-- (string constants cost nothing per call, unlike tables).
local ALLOWED = "@ALLOWED@"
local FINAL = "@FINAL@"

local function qkey(queue, kind) return P .. ":q:" .. queue .. ":" .. kind end
local function mkey(id) return P .. ":m:" .. id end
local function tkey(id) return P .. ":t:" .. id end
local function ikey(kind, value) return P .. ":i:" .. kind .. ":" .. value end

local function now()
  local t = redis.call("TIME")
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Floats go back to the client as strings (Redis truncates Lua numbers to integers).
local function fmt(x) return string.format("%.6f", x) end
-- An exclusive range bound at x, e.g. ZCOUNT key (x +inf.
local function after(x) return string.format("(%.17g", x) end

-- Wake one idle consumer of the queue, unless a wake-up is already pending.
local function wake(queue)
  local w = qkey(queue, "wake")
  if redis.call("LLEN", w) == 0 then redis.call("RPUSH", w, "1") end
end

-- Give a message a new place behind everything of its priority; returns its ready score.
local function rescore(id)
  local key = mkey(id)
  local seq = redis.call("INCR", SEQ)
  local score = (MAX_PRIORITY - tonumber(redis.call("HGET", key, "p"))) * SPAN + seq
  redis.call("HSET", key, "o", score)
  return score
end

-- Put a message back in its ready set, behind everything of its priority.
local function requeue(queue, id)
  redis.call("ZADD", qkey(queue, "ready"), rescore(id), id)
end

-- The queue of message `id` if `token` holds its lease at time `t`, else nil.
local function held(id, token, t)
  local m = redis.call("HMGET", mkey(id), "q", "t")
  if not m[1] or m[2] ~= token then return nil end
  local deadline = redis.call("ZSCORE", qkey(m[1], "leased"), id)
  if not deadline or tonumber(deadline) <= t then return nil end
  return m[1]
end

-- Release a held message's lease and remove it from the leased set.
local function unlease(queue, id)
  redis.call("ZREM", qkey(queue, "leased"), id)
  redis.call("HDEL", mkey(id), "t")
end

-- Records ---------------------------------------------------------------------------------
-- A record is a hash: s (status), k (lease token, "" for none, else "+" .. token),
-- n (name), q (queue), j (the task as JSON), x ("1" while it has a TTL), and
-- r ("<start time> <old status> <old k>") while a reserve has marked it running (see
-- start_record): s, k and r then override the JSON's status, lease token and start time,
-- and its attempts count one more. Index sets (all
-- scores 0, so ZRANGEBYLEX orders them by id): i:all, i:s:<status>, i:n:<name>,
-- i:q:<queue>. A record saved with a TTL also has a Redis expiry, a score in i:exp (when
-- it expires) and a line in i:expmeta ("status name queue"), so that its index entries
-- can be removed even after Redis dropped the hash.

local function is_final(status) return string.find(FINAL, " " .. status .. " ", 1, true) end
local function allowed(old, new)
  return string.find(ALLOWED, " " .. old .. ">" .. new .. " ", 1, true)
end

-- The stored record as {status, token, name, queue, has_ttl, started}, or nil.
local function old_record(id)
  local r = redis.call("HMGET", tkey(id), "s", "k", "n", "q", "x", "r")
  if r[1] then return r end
  return nil
end

-- nil if a write with this status and token may replace `old`, else why not.
local function check_record(old, status, token)
  if not old then return nil end
  if token ~= "" and status ~= "running" and old[2] ~= token then return "STALE" end
  if not allowed(old[1], status) then return "TRANSITION " .. old[1] end
  return nil
end

-- Remove an expiring record from every index; `meta` is its line in i:expmeta.
local function forget(id, meta)
  local s, n, q = string.match(meta or "", "^(%S+) (%S+) (%S+)$")
  if s then
    redis.call("ZREM", ikey("s", s), id)
    redis.call("ZREM", ikey("n", n), id)
    redis.call("ZREM", ikey("q", q), id)
  end
  redis.call("HDEL", EXPMETA, id)
  redis.call("ZREM", ALL, id)
  redis.call("ZREM", EXP, id)
end

-- Remove up to `max` records whose TTL has passed (-1: all); returns how many.
local function cleanup(t, max)
  local ids = redis.call("ZRANGEBYSCORE", EXP, "-inf", t, "LIMIT", 0, max)
  for _, id in ipairs(ids) do
    forget(id, redis.call("HGET", EXPMETA, id))
    redis.call("DEL", tkey(id)) -- Redis expires it too; this settles millisecond rounding
  end
  return #ids
end

local function reindex(kind, old, new, id)
  if old == new then return end
  if old then redis.call("ZREM", ikey(kind, old), id) end
  redis.call("ZADD", ikey(kind, new), 0, id)
end

-- Stop a record expiring (a record with a TTL that is written again without one).
local function persist(key, id)
  redis.call("HDEL", key, "x")
  redis.call("PERSIST", key)
  redis.call("ZREM", EXP, id)
  redis.call("HDEL", EXPMETA, id)
end

-- Write a record over `old` (from old_record, checked by check_record). ttl <= 0: none.
local function write_record(old, id, status, token, name, queue, json, ttl, t)
  local key = tkey(id)
  if not old then
    local meta = redis.call("HGET", EXPMETA, id)
    if meta then forget(id, meta) end -- Redis expired it before a cleanup came by
    redis.call("ZADD", ALL, 0, id)
    old = {false, false, false, false, false, false}
  end
  if old[6] then redis.call("HDEL", key, "r") end -- the JSON is whole again
  reindex("s", old[1], status, id)
  reindex("n", old[3], name, id)
  reindex("q", old[4], queue, id)
  if ttl > 0 then
    redis.call("HSET", key, "s", status, "k", token, "n", name, "q", queue, "j", json, "x", "1")
    redis.call("PEXPIRE", key, math.ceil(ttl * 1000))
    redis.call("ZADD", EXP, t + ttl, id)
    redis.call("HSET", EXPMETA, id, status .. " " .. name .. " " .. queue)
  else
    redis.call("HSET", key, "s", status, "k", token, "n", name, "q", queue, "j", json)
    if old[5] then persist(key, id) end
  end
end

-- Mark the record of a task being reserved running under `token`, as the executor would,
-- without rewriting its JSON (the r field says what changed). True if it did; false if
-- there is no record or its status may not become running (the executor then writes,
-- and is refused, itself).
local function start_record(id, token, t)
  local old = old_record(id)
  if not old or not allowed(old[1], "running") then return false end
  local key = tkey(id)
  -- after a start whose worker was lost, keep what the record was before that one
  local before = old[6] and string.match(old[6], "^%S+ (.*)$") or (old[1] .. " " .. old[2])
  reindex("s", old[1], "running", id)
  redis.call("HSET", key, "s", "running", "k", "+" .. token, "r", fmt(t) .. " " .. before)
  if old[5] then persist(key, id) end
  return true
end

-- Undo start_record for a reservation handed back (its task may have begun, not finished).
local function unstart_record(id, token)
  local key = tkey(id)
  local r = redis.call("HMGET", key, "r", "k")
  if not r[1] or r[2] ~= "+" .. token then return end
  local status, old_token = string.match(r[1], "^%S+ (%S+) (.*)$")
  reindex("s", "running", status, id)
  redis.call("HSET", key, "s", status, "k", old_token)
  redis.call("HDEL", key, "r")
end
