-- Store new records and push new messages, all or nothing.
-- ARGV: prefix, #records, #messages, then 6 per record: id, status, token, name, queue, json;
-- then 5 per message: id, queue, body, priority, eta ("" for none).
-- Returns 0 (done), or {"DUPLICATE", id} (a message with this id exists) or
-- {"DUPLICATE", id, status} (a record does: even a finished task's id is never reused;
-- a message pushed on its own may follow its record, saved first) and writes nothing.
-- Everything is checked before the first write, and every write succeeds (see `fixed` in
-- common.lua), so a refusal or an error leaves nothing behind.
local nrec, nmsg = tonumber(ARGV[2]), tonumber(ARGV[3])
local r0, m0 = 4, 4 + 6 * nrec
local t = now()

-- The status of the record a new id would reuse, or nil when there is none.
local function taken_by(id)
  local old = old_record(id)
  if not old then return nil end
  if old.bad then return "unreadable: " .. old.bad end
  return old[1]
end

-- messages first: a duplicate message is DUPLICATE whatever its record says
local seen = {}
for i = 0, nmsg - 1 do
  local id = ARGV[m0 + 5 * i]
  if seen[id] or redis.call("EXISTS", mkey(id)) == 1 then return {"DUPLICATE", id} end
  seen[id] = true
end
local recorded = {}
for i = 0, nrec - 1 do
  local id = ARGV[r0 + 6 * i]
  local status = taken_by(id)
  if status then return {"DUPLICATE", id, status} end
  if recorded[id] then return {"DUPLICATE", id} end
  recorded[id] = true
end

for i = 0, nrec - 1 do
  local a = r0 + 6 * i
  write_record(nil, ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], 0, t)
end
local seq = nmsg > 0 and next_seq(nmsg) - nmsg or 0
local known, ready = {}, {}
for i = 0, nmsg - 1 do
  local a = m0 + 5 * i
  local id, queue, prio, eta = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 3]), ARGV[a + 4]
  local score = (MAX_PRIORITY - prio) * SPAN + seq + i + 1
  redis.call("HSET", mkey(id), "q", queue, "b", ARGV[a + 2], "p", prio, "o", score, "d", 0, "l", 0)
  if not known[queue] then
    if type(redis.pcall("SADD", QUEUES, queue)) == "table" then
      fixed(QUEUES, "SADD", QUEUES, queue)
    end
    known[queue] = true
  end
  local key = qkey(queue, "ready")
  if eta ~= "" and tonumber(eta) > t then
    key, score = qkey(queue, "later"), eta
  else
    ready[queue] = true
  end
  -- (redis.pcall first, fixed only when it failed: see fixed in common.lua)
  if type(redis.pcall("ZADD", key, score, id)) == "table" then
    fixed(key, "ZADD", key, score, id)
  end
end
for queue in pairs(ready) do wake(queue) end
return 0
