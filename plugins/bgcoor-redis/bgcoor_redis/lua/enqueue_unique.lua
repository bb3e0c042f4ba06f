-- Enqueue tasks as enqueue.lua does, except those whose unique key is held, by a stored task
-- or by an earlier task of this call (see "Unique keys" in common.lua); those who enqueue
-- take their keys. One step: every enqueued task's record, message and key, or nothing.
-- ARGV: prefix, n, then n records (6 fields each, as enqueue.lua takes them), n messages
-- (6 each), then 2 per task: its unique key ("" for none) and its window's end ("" for
-- none); then, only when a message goes to a queue with a limit, the limits (see "Queue
-- limits" in common.lua), which only the tasks enqueued count against. The i-th record,
-- message and key are one task's.
-- Returns 0 (each task enqueued), {"HELD", i, holder, ...} (task i, from 0, was not: the
-- task `holder` holds its key; the others were), {"SELF", id} (task `id` already holds its
-- key: this call, tried again), refuse_new's {"DUPLICATE", ...} or refuse_full's {"FULL",
-- queue, limit, adding}; a refusal writes nothing.
local n = tonumber(ARGV[2])
local r0, m0, k0, l0 = 3, 3 + 6 * n, 3 + 12 * n, 3 + 14 * n
local t = now()
local recs, msgs, held, taken = {}, {}, {"HELD"}, {}
for i = 0, n - 1 do
  local id, key = ARGV[r0 + 6 * i], ARGV[k0 + 2 * i]
  local holder = nil
  if key ~= "" then holder = taken[key] or unique_holder(key, t) end
  if holder == id then return {"SELF", id} end
  if holder then
    held[#held + 1] = i
    held[#held + 1] = holder
  else
    if key ~= "" then taken[key] = id end
    recs[#recs + 1], msgs[#msgs + 1] = r0 + 6 * i, m0 + 6 * i
  end
end
local refused = refuse_new(recs, msgs)
if refused then return refused end
if ARGV[l0] then
  refused = refuse_full(msgs, l0)
  if refused then return refused end
end
store_new(recs, msgs, t)
for _, a in ipairs(recs) do
  local k = k0 + 2 * ((a - r0) / 6)
  if ARGV[k] ~= "" then unique_take(ARGV[k], ARGV[a], ARGV[k + 1]) end
end
if #held > 1 then return held end
return 0
