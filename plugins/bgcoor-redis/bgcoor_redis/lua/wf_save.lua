-- save.lua for a workflow member's record (no expiry while its workflow runs), then, if
-- it became final, the workflow's step (workflow.lua: wf_step) in the same call.
-- ARGV: prefix, id, status, token, name, queue, json, workflow id, node key, error ("").
-- Returns 0, save.lua's refusals (nothing written), or {"WORKFLOW", why}: the record is
-- stored but the workflow's hash cannot be read, so it was not stepped.
local id, status = ARGV[2], ARGV[3]
local old = old_record(id)
local err = check_record(old, status, ARGV[4])
if err then return err end
local t = now()
write_record(old, id, status, ARGV[4], ARGV[5], ARGV[6], ARGV[7], 0, t)
if not is_final(status) then return 0 end
local why = wf_step(ARGV[8], tonumber(ARGV[9]), status, ARGV[10], t)
if why then return {"WORKFLOW", why} end
return 0
