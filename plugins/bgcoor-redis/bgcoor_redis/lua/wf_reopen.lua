-- A dead member requeued from the dead letters: its record stored as save.lua stores one
-- (pending, no lease; no expiry), then its workflow reopened (workflow.lua: wf_reopen) if
-- its failure alone failed it, in the same call.
-- ARGV: prefix, id, status, token, name, queue, json, workflow id, node key.
-- Returns 0, save.lua's refusals (nothing written), or {"WORKFLOW", why}: the record is
-- stored but the workflow's hash cannot be read, so it was not reopened.
local id, status = ARGV[2], ARGV[3]
local old = old_record(id)
local err = check_record(old, status, ARGV[4])
if err then return err end
local t = now()
write_record(old, id, status, ARGV[4], ARGV[5], ARGV[6], ARGV[7], 0, t)
local why = wf_reopen(ARGV[8], tonumber(ARGV[9]), t)
if why then return {"WORKFLOW", why} end
return 0
