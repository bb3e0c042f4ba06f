-- ARGV: prefix, id, status, token, name, queue, json, ttl (0: none).
-- Returns 0 (done), "STALE" or "TRANSITION <old status>".
local id = ARGV[2]
local old = old_record(id)
local err = check_record(old, ARGV[3], ARGV[4])
if err then return err end
local t = now()
local ttl = tonumber(ARGV[8])
write_record(old, id, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ttl, t)
if ttl > 0 then cleanup(t, 2) end
return 0
