-- Submit a workflow: its hash, every member's record (no expiry), the roots' messages
-- pushed as enqueue.lua pushes them and the others parked; all or nothing.
-- ARGV: prefix, workflow id, #fields, #records, #messages, #parked, then field, value
-- pairs of the hash (see workflow.lua), 6 per record (as enqueue.lua), 5 per message
-- (as enqueue.lua), 6 per parked message (node key, then the 5 of a message).
-- Returns 0, {"DUPLICATE_WORKFLOW"} or enqueue.lua's refusals; a refusal writes nothing.
local wid = ARGV[2]
local nfield, nrec, nmsg, npark = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6])
local f0 = 7
local r0 = f0 + 2 * nfield
local m0 = r0 + 6 * nrec
local k0 = m0 + 5 * nmsg
local W = wf_key(wid)
local t = now()

if redis.call("EXISTS", W) == 1 then return {"DUPLICATE_WORKFLOW"} end
local seen = {}
local function message_taken(id)
  if seen[id] or redis.call("EXISTS", mkey(id)) == 1 then return true end
  seen[id] = true
  return false
end
for i = 0, nmsg - 1 do
  local id = ARGV[m0 + 5 * i]
  if message_taken(id) then return {"DUPLICATE", id} end
end
for i = 0, npark - 1 do
  local id = ARGV[k0 + 6 * i + 1]
  if message_taken(id) then return {"DUPLICATE", id} end
end
local recorded = {}
for i = 0, nrec - 1 do
  local id = ARGV[r0 + 6 * i]
  local old = old_record(id)
  if old then return {"DUPLICATE", id, old.bad and "unreadable: " .. old.bad or old[1]} end
  if recorded[id] then return {"DUPLICATE", id} end
  recorded[id] = true
end

for first = 0, nfield - 1, 500 do
  local last = math.min(first + 499, nfield - 1)
  redis.call("HSET", W, unpack(ARGV, f0 + 2 * first, f0 + 2 * last + 1))
end
for i = 0, nrec - 1 do
  local a = r0 + 6 * i
  write_record(nil, ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], 0, t)
end
local woken = {}
for i = 0, nmsg - 1 do
  local a = m0 + 5 * i
  if wf_push(ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4], t) then
    woken[ARGV[a + 1]] = true
  end
end
local parked = W .. ":parked"
for i = 0, npark - 1 do
  local a = k0 + 6 * i
  local k = ARGV[a]
  redis.call("HSET", parked, "q:" .. k, ARGV[a + 2], "b:" .. k, ARGV[a + 3], "p:" .. k,
    ARGV[a + 4], "a:" .. k, ARGV[a + 5])
end
for queue in pairs(woken) do wake(queue) end
return 0
