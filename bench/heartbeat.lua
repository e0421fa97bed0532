-- wrk: one heartbeat per request, spread over EXECUTIONS execution ids.
local executions = tonumber(os.getenv("EXECUTIONS") or "1000")
local sent = 0
local thread_tag = tostring(math.random(1, 1000000))

request = function()
  sent = sent + 1
  local id = "bench-" .. (sent % executions)
  local body = '{"execution_id":"' .. id .. '","container_id":"task-' .. id ..
    '","status":"running","progress":{"stage":"load","current_step":' .. (sent % 100) ..
    ',"total_steps":100},"timestamp":1700000000,"task_name":"bench-' .. (sent % 10) .. '"}'
  return wrk.format("POST", "/api/v1/monitoring/heartbeat", {["Content-Type"] = "application/json"}, body)
end
