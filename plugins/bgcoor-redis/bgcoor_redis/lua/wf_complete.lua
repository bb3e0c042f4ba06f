-- complete.lua for a workflow member (its record without expiry while its workflow runs),
-- then, if the record became final, the workflow's step (workflow.lua: wf_step).
-- ARGV: prefix, id, message token, status, record token, name, queue, json, workflow id,
-- node key, error ("" for none).
-- Returns 0, complete.lua's refusals (nothing written), or {"WORKFLOW", why}: the outcome
-- is stored and acked but the workflow's hash cannot be read, so it was not stepped.
local id, token, status = ARGV[2], ARGV[3], ARGV[4]
local t = now()
local queue, g = held(id, token, t)
if not queue then return "STALE" end
local old = old_record(id)
local err = check_record(old, status, ARGV[5])
if err then return err end
write_record(old, id, status, ARGV[5], ARGV[6], ARGV[7], ARGV[8], 0, t)
redis.call("ZREM", qkey(queue, "leased"), id)
redis.call("DEL", mkey(id))
if g then unhold(id, g) end -- (members have no limits today; should one ever have)
local why = is_final(status) and wf_step(ARGV[9], tonumber(ARGV[10]), status, ARGV[11], t)
cleanup(t, 2) -- as complete.lua: each outcome clears at most two expired records
if why then return {"WORKFLOW", why} end
return 0
