-- Store new records and push new messages, all or nothing.
-- ARGV: prefix, #records, #messages, then 6 per record: id, status, token, name, queue, json;
-- then 6 per message: id, queue, body, priority, eta, gate ("" for none); then, only when a
-- message goes to a queue with a limit, the limits (see "Queue limits" in common.lua).
-- Returns 0 (done), or refuse_new's {"DUPLICATE", id} / {"DUPLICATE", id, status} or
-- refuse_full's {"FULL", queue, limit, adding} and writes nothing (see "New tasks" in
-- common.lua).
local nrec, nmsg = tonumber(ARGV[2]), tonumber(ARGV[3])
local recs, msgs = {}, {}
for i = 1, nrec do recs[i] = 4 + 6 * (i - 1) end
for i = 1, nmsg do msgs[i] = 4 + 6 * nrec + 6 * (i - 1) end
local refused = refuse_new(recs, msgs)
if refused then return refused end
local limits = 4 + 6 * (nrec + nmsg)
if ARGV[limits] then
  refused = refuse_full(msgs, limits)
  if refused then return refused end
end
store_new(recs, msgs, now())
return 0
