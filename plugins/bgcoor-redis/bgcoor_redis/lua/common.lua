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
local MIN_PRIORITY, MAX_PRIORITY = @MIN_PRIORITY@, @MAX_PRIORITY@
local SPAN = @SPAN@
-- " old>new " for every allowed status change, and " status " for each final status
-- (string constants cost nothing per call, unlike tables).
local ALLOWED = "@ALLOWED@"
local FINAL = "@FINAL@"
-- " status " for every status; a stored status not in it may only become one of the
-- "?>new" pairs in ALLOWED (FROM_UNKNOWN_STATUS: dead).
local STATUSES = "@STATUSES@"

local function qkey(queue, kind) return P .. ":q:" .. queue .. ":" .. kind end
local function mkey(id) return P .. ":m:" .. id end
local function tkey(id) return P .. ":t:" .. id end
local function ikey(kind, value) return P .. ":i:" .. kind .. ":" .. value end
local function ukey(name) return P .. ":uniq:" .. name end
local function gkey(name, kind) return P .. ":gate:" .. name .. ":" .. kind end

local function now()
  local t = redis.call("TIME")
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Floats go back to the client as strings (Redis truncates Lua numbers to integers).
local function fmt(x) return string.format("%.6f", x) end
-- An exclusive range bound at x, e.g. ZCOUNT key (x +inf.
local function after(x) return string.format("(%.17g", x) end

-- Corrupt state ---------------------------------------------------------------------------
-- A key or field written by something else must cost at most its one task, and no script
-- may fail half way (Redis does not roll a script back). Commands that could meet a value
-- of the wrong type run through redis.pcall, which costs what redis.call does: checks
-- cost nothing until something is wrong.

-- A value for a defect text: quoted, short, "missing" for an absent field.
local function show(v)
  if not v then return "missing" end
  if type(v) ~= "string" then v = tostring(v) end
  if #v > 40 then v = string.sub(v, 1, 40) .. "..." end
  return string.format("%q", v)
end

local function wrong_type(r)
  return type(r) == "table" and r.err and string.find(r.err, "WRONGTYPE", 1, true)
end

-- Run command `...` on `key`, which holds no data a script could lose by replacing it
-- (a wake list, an index set, a queue's set): if it holds a value of another type
-- (nothing there can be read as ours), replace it, say so in the server log, run again.
-- Hot paths call redis.pcall themselves and this only when that failed: a Lua function
-- call costs a good part of what a command does.
local function fixed(key, ...)
  local r = redis.pcall(...)
  if type(r) == "table" and r.err then
    if not wrong_type(r) then error(r) end
    redis.log(redis.LOG_WARNING, "bg-coor: " .. key .. " held a value of the wrong type; replaced")
    redis.call("DEL", key)
    r = redis.call(...)
  end
  return r
end

-- A read that treats a value of the wrong type as nothing: `default`.
local function readable(default, ...)
  local r = redis.pcall(...)
  if wrong_type(r) then return default end
  if type(r) == "table" and r.err then error(r) end
  return r
end

-- A stored counter (deliveries, losses) as a number, or nil unless it is a whole number
-- from 0 to 2**31 - 2, so that one more still fits every client's integer.
local function count(v)
  local n = tonumber(v)
  if n and n >= 0 and n < 2147483647 and n % 1 == 0 then return n end
  return nil
end

-- A stored priority as a number, or nil unless it is a whole number in range.
local function priority(v)
  local n = tonumber(v)
  if n and n >= MIN_PRIORITY and n <= MAX_PRIORITY and n % 1 == 0 then return n end
  return nil
end

-- A stored ready score as a number, or nil unless it is one a ready score can be.
local function order(v)
  local n = tonumber(v)
  if n and n >= 0 and n < 2 ^ 53 then return n end
  return nil
end

-- The next `n` sequence numbers end at the returned one. A sequence counter that is not
-- an integer is restarted above any number in use: those count pushes, and the clock in
-- milliseconds is far ahead of any count (and below SPAN until the year 2109).
local function next_seq(n)
  local r = redis.pcall("INCRBY", SEQ, n)
  if type(r) == "table" then
    redis.log(redis.LOG_WARNING,
      "bg-coor: " .. SEQ .. " was not an integer (" .. r.err .. "); restarted")
    redis.call("DEL", SEQ)
    r = redis.call("INCRBY", SEQ, math.floor(now() * 1000) + n)
  end
  return r
end

-- Wake one idle consumer of the queue, unless a wake-up is already pending.
local function wake(queue)
  local w = qkey(queue, "wake")
  local n = redis.pcall("LLEN", w)
  if type(n) == "table" then n = fixed(w, "LLEN", w) end
  if n == 0 then redis.call("RPUSH", w, "1") end
end

-- Give a message a new place behind everything of its priority; returns its ready score
-- and its gate (field g, nil for none: see "Rate and concurrency limits"), read with it.
-- A message whose priority cannot be read goes to the front (score 0), where the next
-- reserve finds what is wrong with it and hands it out as a defect.
local function rescore(id)
  local key = mkey(id)
  local seq = next_seq(1)
  local m = redis.pcall("HMGET", key, "p", "g")
  if m.err then return 0 end -- not a hash
  local p = priority(m[1])
  if not p then return 0, m[2] end
  local score = (MAX_PRIORITY - p) * SPAN + seq
  redis.call("HSET", key, "o", score)
  return score, m[2]
end

-- Put a message back in its ready set, behind everything of its priority; returns its gate.
local function requeue(queue, id)
  local ready = qkey(queue, "ready")
  local score, g = rescore(id)
  fixed(ready, "ZADD", ready, score, id)
  return g
end

-- The queue of message `id` if `token` holds its lease at time `t`, else nil; and its
-- gate (field g, nil for none), so that a settle can free the slot it holds.
local function held(id, token, t)
  local m = redis.pcall("HMGET", mkey(id), "q", "t", "g")
  if m.err or not m[1] or m[2] ~= token then return nil end
  local leased = qkey(m[1], "leased")
  local deadline = redis.pcall("ZSCORE", leased, id)
  if type(deadline) == "table" then deadline = readable(false, "ZSCORE", leased, id) end
  if not deadline or tonumber(deadline) <= t then return nil end
  return m[1], m[3]
end

-- Release a held message's lease and remove it from the leased set.
local function unlease(queue, id)
  redis.call("ZREM", qkey(queue, "leased"), id) -- readable: held() found the id in it
  redis.call("HDEL", mkey(id), "t")
end

-- Records ---------------------------------------------------------------------------------
-- A record is a hash: s (status), k (lease token, "" for none, else "+" .. token),
-- n (name), q (queue), j (the task as JSON), x ("1" while it has a TTL), and
-- r ("<start time> <old status> <old k>") while a reserve has marked it running (see
-- start_record): s, k and r then override the JSON's status, lease token and start time,
-- and its attempts count one more; and u, the unique key it took (see "Unique keys").
-- Index sets (all scores 0, so ZRANGEBYLEX orders them by id): i:all, i:s:<status>,
-- i:n:<name>, i:q:<queue>. A record saved with a TTL also has a Redis expiry, a score in
-- i:exp (when it expires) and a line in i:expmeta ("status name queue"), so that its index
-- entries can be removed even after Redis dropped the hash.

local function is_final(status) return string.find(FINAL, " " .. status .. " ", 1, true) end
local function known(status)
  return not string.find(status, " ", 1, true)
    and string.find(STATUSES, " " .. status .. " ", 1, true)
end
local function allowed(old, new)
  if not known(old) then old = "?" end
  return string.find(ALLOWED, " " .. old .. ">" .. new .. " ", 1, true)
end

-- The stored record as {status, token, name, queue, has_ttl, started, unique key}, or nil.
-- A key that is not a hash gives {bad = what is wrong}: only a write marking the task dead
-- replaces it.
local function old_record(id)
  local r = redis.pcall("HMGET", tkey(id), "s", "k", "n", "q", "x", "r", "u")
  if r.err then return {bad = tkey(id) .. " is not a hash"} end
  if r[1] then return r end
  return nil
end

-- nil if a write with this status and token may replace `old`, else why not.
local function check_record(old, status, token)
  if not old then return nil end
  if old.bad then return status ~= "dead" and "CORRUPT " .. old.bad or nil end
  if token ~= "" and status ~= "running" and old[2] ~= token then return "STALE" end
  if not allowed(old[1], status) then return "TRANSITION " .. old[1] end
  return nil
end

local function zrem(key, id) fixed(key, "ZREM", key, id) end
local function hdel(key, field) fixed(key, "HDEL", key, field) end

-- Remove an expiring record from every index; `meta` is its line in i:expmeta.
local function forget(id, meta)
  local s, n, q = string.match(meta or "", "^(%S+) (%S+) (%S+)$")
  if s then
    zrem(ikey("s", s), id)
    zrem(ikey("n", n), id)
    zrem(ikey("q", q), id)
  end
  hdel(EXPMETA, id)
  zrem(ALL, id)
  zrem(EXP, id)
end

-- Remove up to `max` records whose TTL has passed (-1: all); returns how many.
local function cleanup(t, max)
  local ids = redis.pcall("ZRANGEBYSCORE", EXP, "-inf", t, "LIMIT", 0, max)
  if ids.err then ids = fixed(EXP, "ZRANGEBYSCORE", EXP, "-inf", t, "LIMIT", 0, max) end
  for _, id in ipairs(ids) do
    forget(id, fixed(EXPMETA, "HGET", EXPMETA, id))
    redis.call("DEL", tkey(id)) -- Redis expires it too; this settles millisecond rounding
  end
  return #ids
end

local function reindex(kind, old, new, id)
  if old == new then return end
  local key
  if old then
    key = ikey(kind, old)
    if type(redis.pcall("ZREM", key, id)) == "table" then zrem(key, id) end
  end
  key = ikey(kind, new)
  if type(redis.pcall("ZADD", key, 0, id)) == "table" then fixed(key, "ZADD", key, 0, id) end
end

-- Unique keys ------------------------------------------------------------------------------
-- A unique key `name` taken by task `id` is the string uniq:<name> = "<window end> <id>"
-- (window end: Unix seconds, "" for none). It needs no release: the next enqueue reads it
-- and takes it over once its holder is final (or its record gone) and its window over
-- (unique_holds). So that it does not outlive any use, it expires when its holder's record
-- gets a TTL, at that expiry or its window's end, whichever is later, and lasts again when
-- the record does (unique_expire); until then it has none.

-- bgcoor_core.kit.holds: whether a holder whose record has status `s` (nil: no record
-- left), its window ending at `ends` (nil: none), still holds its key at `t`.
local function unique_holds(s, ends, t)
  if ends and t < ends then return true end
  return s ~= nil and not is_final(s)
end

-- The entry of key `name` as its window's end (a number or nil) and holder id, or nil.
local function unique_entry(name)
  local v = redis.pcall("GET", ukey(name))
  if type(v) ~= "string" then return nil end -- none, or not a string (not ours: SET replaces it)
  local ends, id = string.match(v, "^(%S*) (.+)$")
  if not id then return nil end
  return tonumber(ends), id
end

-- The task holding key `name` at time `t`, or nil if it is free. A record that cannot be
-- read (not a hash, an unknown status) counts as gone, as the SQLite store reads one.
local function unique_holder(name, t)
  local ends, id = unique_entry(name)
  if not id then return nil end
  local s = redis.pcall("HGET", tkey(id), "s")
  if type(s) ~= "string" or not known(s) then s = nil end
  if unique_holds(s, ends, t) then return id end
  return nil
end

-- Task `id`, just stored, takes key `name` with its window ending at `ends` ("" for none).
-- No expiry yet (SET drops the last holder's): its holder is not final.
local function unique_take(name, id, ends)
  redis.call("SET", ukey(name), ends .. " " .. id)
  redis.call("HSET", tkey(id), "u", name)
end

-- The record of `id`, which took key `name`, now expires at `at` (nil: never): so does the
-- key's entry, not before its window ends, if `id` still holds it.
local function unique_expire(name, id, at)
  local ends, holder = unique_entry(name)
  if holder ~= id then return end -- taken over since (or gone)
  if not at then
    redis.call("PERSIST", ukey(name))
    return
  end
  if ends and ends > at then at = ends end
  redis.call("PEXPIREAT", ukey(name), math.ceil(at * 1000))
end

-- Stop a record expiring (a record with a TTL that is written again without one), and the
-- entry of the unique key `unique` it took, if any.
local function persist(key, id, unique)
  redis.call("HDEL", key, "x")
  redis.call("PERSIST", key)
  zrem(EXP, id)
  hdel(EXPMETA, id)
  if unique then unique_expire(unique, id, nil) end
end

-- Write a record over `old` (from old_record, checked by check_record). ttl <= 0: none.
local function write_record(old, id, status, token, name, queue, json, ttl, t)
  local key = tkey(id)
  if old and old.bad then
    redis.call("DEL", key) -- unreadable, and checked: this write marks the task dead
    old = nil
  end
  if not old then
    local meta = redis.pcall("HGET", EXPMETA, id)
    if type(meta) == "table" then meta = fixed(EXPMETA, "HGET", EXPMETA, id) end
    if meta then forget(id, meta) end -- Redis expired it before a cleanup came by
    if type(redis.pcall("ZADD", ALL, 0, id)) == "table" then fixed(ALL, "ZADD", ALL, 0, id) end
    old = {false, false, false, false, false, false}
  end
  if old[6] then redis.call("HDEL", key, "r") end -- the JSON is whole again
  reindex("s", old[1], status, id)
  reindex("n", old[3], name, id)
  reindex("q", old[4], queue, id)
  if ttl > 0 then
    redis.call("HSET", key, "s", status, "k", token, "n", name, "q", queue, "j", json, "x", "1")
    redis.call("PEXPIRE", key, math.ceil(ttl * 1000))
    if type(redis.pcall("ZADD", EXP, t + ttl, id)) == "table" then
      fixed(EXP, "ZADD", EXP, t + ttl, id)
    end
    local meta = status .. " " .. name .. " " .. queue
    if type(redis.pcall("HSET", EXPMETA, id, meta)) == "table" then
      fixed(EXPMETA, "HSET", EXPMETA, id, meta)
    end
    if old[7] then unique_expire(old[7], id, t + ttl) end
  else
    redis.call("HSET", key, "s", status, "k", token, "n", name, "q", queue, "j", json)
    if old[5] then persist(key, id, old[7]) end
  end
  -- whoever waits for this task's outcome (``result()``, see _notices.py) gets it now
  if is_final(status) then redis.call("PUBLISH", P .. ":done:" .. id, json) end
end

-- Mark the record of a task being reserved running under `token`, as the executor would,
-- without rewriting its JSON (the r field says what changed). Returns the start time (as r
-- holds it) if it did, "0" if there is no record or its status may not become running (the
-- executor then writes, and is refused, itself), and, for a record that cannot be read, "0"
-- and what is wrong.
local function start_record(id, token, t)
  local old = old_record(id)
  if not old then return "0" end
  if old.bad then return "0", "corrupt record: " .. old.bad end
  local status = old[1]
  -- (a status with a space could span two pairs of ALLOWED)
  if string.find(status, " ", 1, true)
      or not string.find(ALLOWED, " " .. status .. ">running ", 1, true) then
    if known(status) then return "0" end
    return "0", "corrupt record: " .. tkey(id) .. " has status " .. show(status)
  end
  local key = tkey(id)
  -- after a start whose worker was lost, keep what the record was before that one
  local before = old[6] and string.match(old[6], "^%S+ (%S+ .*)$")
  if not before then before = old[1] .. " " .. (old[2] or "") end
  reindex("s", old[1], "running", id)
  local at = fmt(t)
  redis.call("HSET", key, "s", "running", "k", "+" .. token, "r", at .. " " .. before)
  if old[5] then persist(key, id, old[7]) end
  return at
end

-- Undo start_record for a reservation handed back (its task may have begun, not finished).
local function unstart_record(id, token)
  local key = tkey(id)
  local r = redis.pcall("HMGET", key, "r", "k")
  if r.err or not r[1] or r[2] ~= "+" .. token then return end
  local status, old_token = string.match(r[1], "^%S+ (%S+) (.*)$")
  if not status then return end -- start_record wrote it; anything else is not ours to undo
  reindex("s", "running", status, id)
  redis.call("HSET", key, "s", status, "k", old_token)
  redis.call("HDEL", key, "r")
end

-- Rate and concurrency limits ------------------------------------------------------------
-- A message with limits has a field g, its gate as bgcoor_core's Gate.encode writes it:
-- "<interval> <burst> <concurrency> <key>", "-" for a limit not set (the rules are in
-- bgcoor_core._gates; the reserve applies them, see reserve.lua), and a field a ("1")
-- while it holds a rate slot given when the reserve deferred it. A message without g costs
-- nothing: every script reads g with fields it reads anyway. Per gate key k:
--   gate:<k>:tat     string, the key's theoretical arrival time (the rate), expiring once
--                    it is past (an idle key then reads as none: nothing accumulates);
--   gate:<k>:held    sorted set of the ids holding a concurrency slot, scored by their
--                    lease deadline (live holders: score after now; extend moves it);
--   gate:<k>:parked  sorted set of the ids waiting for a slot, scored by ready score;
-- and per queue q:<queue>:parked, the same ids by queue (stats count them as scheduled,
-- purge deletes them). A parked id is in both sets or in neither.

-- A whole number from 1 to 2**31 - 1, or nil.
local function positive(v)
  local n = tonumber(v)
  if n and n >= 1 and n < 2147483648 and n % 1 == 0 then return n end
  return nil
end

-- Gate text g as {key = k, interval = seconds or nil, burst = n, concurrency = n or nil},
-- or nil if it cannot be read (the reserve hands such a message out as a defect).
local function gate_of(g)
  local i, b, c, name = string.match(g, "^(%S+) (%S+) (%S+) (.+)$")
  if not name then return nil end
  local gate = {key = name, burst = positive(b)}
  if not gate.burst then return nil end
  if i ~= "-" then
    local interval = tonumber(i) -- (NaN fails both comparisons)
    if not (interval and interval > 0 and interval < 1e9) then return nil end
    gate.interval = interval
  end
  if c ~= "-" then
    gate.concurrency = positive(c)
    if not gate.concurrency then return nil end
  end
  return gate
end

-- One GCRA admission on key `name` (bgcoor_core._gates.admit) at time `t`: stores the key's
-- new theoretical arrival time, expiring when it is past, and returns when the message may
-- start (after `t`: the slot it was given). A stored time that is not a finite number
-- (written by something else) counts as none, and is replaced.
local function admit(name, interval, burst, t)
  local k = gkey(name, "tat")
  local tat = tonumber(readable(false, "GET", k))
  local base = t
  if tat and tat > t and tat < math.huge then base = tat end
  local new = base + interval
  local ms = math.max(1, math.min(math.ceil((new - t) * 1000), 2 ^ 50))
  redis.call("SET", k, string.format("%.17g", new), "PX", string.format("%d", ms))
  return base - (burst - 1) * interval
end

-- The first message parked for a slot of key `name` goes back to its ready set, in its
-- old place (ids no longer parked, e.g. purged, are skipped).
local function unpark(name)
  local k = gkey(name, "parked")
  while true do
    local id = readable({}, "ZPOPMIN", k)[1]
    if not id then return end
    local m = redis.pcall("HMGET", mkey(id), "q", "o")
    if not m.err and m[1] and readable(0, "ZREM", qkey(m[1], "parked"), id) == 1 then
      local ready = qkey(m[1], "ready")
      fixed(ready, "ZADD", ready, order(m[2]) or 0, id)
      wake(m[1])
      return
    end
  end
end

-- Message `id`, whose gate text is `g`, stops holding its key's concurrency slot (acked,
-- handed back, dead-lettered, completed or lost), if it held one: the key's first parked
-- message is ready again. Safe to call twice: only the first finds it holding.
local function unhold(id, g)
  local gate = gate_of(g)
  if not (gate and gate.concurrency) then return end
  if readable(0, "ZREM", gkey(gate.key, "held"), id) == 1 then unpark(gate.key) end
end

-- Queue limits -----------------------------------------------------------------------------
-- A producer's enqueue (enqueue.lua, enqueue_unique.lua) into a queue with a limit
-- (BGCOOR_QUEUE_LIMITS) gets the limits of the batch's limited queues as arguments after
-- its own: a count, then a queue and its limit each; an enqueue into no limited queue gets
-- none and runs no command for them. A queue's waiting messages are those not leased: its
-- ready, scheduled and parked sets (a ZCARD each). Retries, schedule ticks, workflow
-- releases and requeued dead letters pass no limits: that work was accepted already.

-- nil if the messages at `msgs` (ARGV positions, as for refuse_new) fit the limits listed
-- from ARGV[at] on (none there: no limits), else {"FULL", queue, limit, adding}: `adding`
-- of them are for `queue`, which would hold more than `limit` waiting messages.
-- bgcoor_core's Broker.refuse_if_full, in the enqueue's own step.
local function refuse_full(msgs, at)
  local n = tonumber(ARGV[at])
  if not n then return nil end
  local adding = {}
  for _, a in ipairs(msgs) do
    local queue = ARGV[a + 1]
    adding[queue] = (adding[queue] or 0) + 1
  end
  for i = at + 1, at + 2 * n, 2 do
    local queue, limit = ARGV[i], tonumber(ARGV[i + 1])
    local count = adding[queue]
    if count then
      -- (a set holding a value of the wrong type counts as empty: the write replaces it)
      if count > limit or count + readable(0, "ZCARD", qkey(queue, "ready"))
          + readable(0, "ZCARD", qkey(queue, "later"))
          + readable(0, "ZCARD", qkey(queue, "parked")) > limit then
        return {"FULL", queue, limit, count}
      end
    end
  end
  return nil
end

-- New tasks (enqueue.lua, enqueue_unique.lua) ---------------------------------------------
-- `recs` and `msgs` list the ARGV positions of the records (6 fields: id, status, token,
-- name, queue, json) and of the messages (6: id, queue, body, priority, eta, gate; "" for
-- none) to store. Everything is checked (refuse_new) before the first write (store_new), and
-- every write succeeds (see `fixed`), so a refusal or an error leaves nothing behind.

-- The status of the record a new id would reuse, or nil when there is none.
local function taken_by(id)
  local old = old_record(id)
  if not old then return nil end
  if old.bad then return "unreadable: " .. old.bad end
  return old[1]
end

-- nil if every record and message is new, else {"DUPLICATE", id} (a message with this id
-- exists, or two share it) or {"DUPLICATE", id, status} (a record does: even a finished
-- task's id is never reused; a message pushed on its own may follow its record, saved first).
-- How many of `keys` exist: one EXISTS per thousand keys (a call takes a bounded number of
-- arguments).
local function count_existing(keys)
  local n = 0
  for i = 1, #keys, 1000 do
    n = n + redis.call("EXISTS", unpack(keys, i, math.min(i + 999, #keys)))
  end
  return n
end

local function refuse_new(recs, msgs)
  -- The common case, every id new, is asked in one EXISTS per kind; only a batch where one
  -- exists looks id by id, to name it.
  local mkeys, tkeys = {}, {}
  for i, a in ipairs(msgs) do mkeys[i] = mkey(ARGV[a]) end
  for i, a in ipairs(recs) do tkeys[i] = tkey(ARGV[a]) end
  local some_message = count_existing(mkeys) > 0
  local some_record = count_existing(tkeys) > 0
  -- messages first: a duplicate message is DUPLICATE whatever its record says
  local seen = {}
  for _, a in ipairs(msgs) do
    local id = ARGV[a]
    if seen[id] or (some_message and redis.call("EXISTS", mkey(id)) == 1) then
      return {"DUPLICATE", id}
    end
    seen[id] = true
  end
  local recorded = {}
  for _, a in ipairs(recs) do
    local id = ARGV[a]
    local status = some_record and taken_by(id)
    if status then return {"DUPLICATE", id, status} end
    if recorded[id] then return {"DUPLICATE", id} end
    recorded[id] = true
  end
  return nil
end

-- Store the records and push the messages (in their order), waking idle consumers.
local function store_new(recs, msgs, t)
  -- Sorted-set members are added per key for the whole batch (ZADD takes many), not per
  -- task: a batch of one queue, name and status makes five ZADDs, whatever its size.
  local keys, members = {}, {}
  local function add(key, score, id)
    local m = members[key]
    if not m then
      m = {}
      members[key] = m
      keys[#keys + 1] = key
    end
    m[#m + 1] = score
    m[#m + 1] = id
  end
  local ids = {}
  for i, a in ipairs(recs) do ids[i] = ARGV[a] end
  for i = 1, #ids, 1000 do -- records Redis expired before a cleanup came by (see forget)
    local part = {unpack(ids, i, math.min(i + 999, #ids))}
    local metas = redis.pcall("HMGET", EXPMETA, unpack(part))
    if metas.err then metas = fixed(EXPMETA, "HMGET", EXPMETA, unpack(part)) end
    for j = 1, #part do
      if metas[j] then forget(part[j], metas[j]) end
    end
  end
  for _, a in ipairs(recs) do -- write_record's writes for a record that is new
    local id, status, token, name, queue, json = unpack(ARGV, a, a + 5)
    add(ALL, 0, id)
    add(ikey("s", status), 0, id)
    add(ikey("n", name), 0, id)
    add(ikey("q", queue), 0, id)
    redis.call("HSET", tkey(id), "s", status, "k", token, "n", name, "q", queue, "j", json)
    if is_final(status) then redis.call("PUBLISH", P .. ":done:" .. id, json) end
  end
  local nmsg = #msgs
  local seq = nmsg > 0 and next_seq(nmsg) - nmsg or 0
  local listed, ready = {}, {}
  for i, a in ipairs(msgs) do
    local id, queue, prio, eta = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 3]), ARGV[a + 4]
    local score = (MAX_PRIORITY - prio) * SPAN + seq + i
    local m = mkey(id)
    if ARGV[a + 5] == "" then
      redis.call("HSET", m, "q", queue, "b", ARGV[a + 2], "p", prio, "o", score, "d", 0, "l", 0)
    else
      redis.call("HSET", m, "q", queue, "b", ARGV[a + 2], "p", prio, "o", score, "d", 0, "l", 0,
        "g", ARGV[a + 5])
    end
    if not listed[queue] then
      if type(redis.pcall("SADD", QUEUES, queue)) == "table" then
        fixed(QUEUES, "SADD", QUEUES, queue)
      end
      listed[queue] = true
    end
    if eta ~= "" and tonumber(eta) > t then
      add(qkey(queue, "later"), eta, id)
    else
      add(qkey(queue, "ready"), score, id)
      ready[queue] = true
    end
  end
  for _, key in ipairs(keys) do -- (redis.pcall first, fixed only when it failed: see fixed)
    local m = members[key]
    for i = 1, #m, 1000 do
      local part = {unpack(m, i, math.min(i + 999, #m))}
      if type(redis.pcall("ZADD", key, unpack(part))) == "table" then
        fixed(key, "ZADD", key, unpack(part))
      end
    end
  end
  for queue in pairs(ready) do wake(queue) end
end
