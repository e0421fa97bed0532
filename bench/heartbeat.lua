-- wrk: one heartbeat per request, spread over EXECUTIONS execution ids.
-- Each wrk thread takes its own share of the execution ids (setup numbers the threads),
-- as distinct tasks do: threads in step on the same ids would race on one execution,
-- which one task sending one heartbeat at a time never does.
local threads = tonumber(os.getenv("THREADS") or "1")
local created = 0
function setup(thread)
  thread:set("first", created)
  created = created + 1
end
local executions = tonumber(os.getenv("EXECUTIONS") or "1000")
local sent = 0

request = function()
  sent = sent + 1
  local id = "bench-" .. (first + threads * (sent % math.floor(executions / threads)))
  local body = '{"execution_id":"' .. id .. '","container_id":"task-' .. id ..
    '","status":"running","progress":{"stage":"load","current_step":' .. (sent % 100) ..
    ',"total_steps":100},"timestamp":1700000000,"task_name":"bench-' .. (sent % 10) .. '"}'
  return wrk.format("POST", "/api/v1/monitoring/heartbeat", {["Content-Type"] = "application/json"}, body)
end
