-- Store records and push messages, all or nothing.
-- ARGV: prefix, #records, #messages, then 6 per record: id, status, token, name, queue, json;
-- then 5 per message: id, queue, body, priority, eta ("" for none).
-- Returns 0 (done), or {"STALE" / "TRANSITION <old>" / "DUPLICATE", id} and writes nothing.
local nrec, nmsg = tonumber(ARGV[2]), tonumber(ARGV[3])
local r0, m0 = 4, 4 + 6 * nrec
local t = now()
-- messages first: a duplicate id is DUPLICATE before its record could refuse anything
local seen = {}
for i = 0, nmsg - 1 do
  local id = ARGV[m0 + 5 * i]
  if seen[id] or redis.call("EXISTS", mkey(id)) == 1 then return {"DUPLICATE", id} end
  seen[id] = true
end
local olds = {}
for i = 0, nrec - 1 do
  local a = r0 + 6 * i
  olds[i] = old_record(ARGV[a])
  local err = check_record(olds[i], ARGV[a + 1], ARGV[a + 2])
  if err then return {err, ARGV[a]} end
end
local written = {}
for i = 0, nrec - 1 do
  local a = r0 + 6 * i
  local id = ARGV[a]
  local old = written[id] and old_record(id) or olds[i] -- the same id twice in one batch
  write_record(old, id, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], 0, t)
  written[id] = true
end
local seq = nmsg > 0 and redis.call("INCRBY", SEQ, nmsg) - nmsg or 0
local known, ready = {}, {}
for i = 0, nmsg - 1 do
  local a = m0 + 5 * i
  local id, queue, prio, eta = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 3]), ARGV[a + 4]
  local score = (MAX_PRIORITY - prio) * SPAN + seq + i + 1
  redis.call("HSET", mkey(id), "q", queue, "b", ARGV[a + 2], "p", prio, "o", score, "d", 0, "l", 0)
  if not known[queue] then
    redis.call("SADD", QUEUES, queue)
    known[queue] = true
  end
  if eta ~= "" and tonumber(eta) > t then
    redis.call("ZADD", qkey(queue, "later"), eta, id)
  else
    redis.call("ZADD", qkey(queue, "ready"), score, id)
    ready[queue] = true
  end
end
for queue in pairs(ready) do wake(queue) end
return 0
