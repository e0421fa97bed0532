-- wrk: one heartbeat per request, spread over EXECUTIONS execution ids and TASKS task names.
DEFAULT_EXECUTIONS = 1000
local tasks = tonumber(os.getenv("TASKS") or "10")
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "share.lua")
local sent = 0

request = function()
  sent = sent + 1
  local id = execution_id("bench-", sent)
  local body = '{"execution_id":"' .. id .. '","container_id":"task-' .. id ..
    '","status":"running","progress":{"stage":"load","current_step":' .. (sent % 100) ..
    ',"total_steps":100},"timestamp":1700000000,"task_name":"bench-' .. (sent % tasks) .. '"}'
  return wrk.format("POST", "/api/v1/monitoring/heartbeat", {["Content-Type"] = "application/json"}, body)
end
