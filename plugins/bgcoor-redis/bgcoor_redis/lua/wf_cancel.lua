-- cancel_all: the workflow is cancelled, and so is every member not done.
-- ARGV: prefix, workflow id. Returns 1 (cancelled), 0 (no such workflow, or it had
-- ended) or {"WORKFLOW", why} when its hash cannot be read (nothing changed).
local W = wf_key(ARGV[2])
local f = redis.pcall("HMGET", W, "status", "n")
if f.err then return {"WORKFLOW", W .. " is not a hash"} end
if not f[1] then
  if redis.call("EXISTS", W) == 0 then return 0 end
  return {"WORKFLOW", W .. " has no status"}
end
if f[1] ~= "@WF_RUNNING@" then return 0 end
local n = count(f[2])
if not n then return {"WORKFLOW", W .. " has n " .. show(f[2])} end
local t = now()
redis.call("HSET", W, "status", "@WF_CANCELLED@")
local done, cancel = wf_column(W, "d:", n), {}
for k = 0, n - 1 do
  if not done[k] then wf_drop(W, k, "@CANCELLED@", cancel) end
end
redis.call("HSET", W, "left", 0)
wf_apply(W, {}, cancel, {}, t)
wf_end(W, n, "@WF_CANCELLED@", t)
return 1
