-- wrk: the same per-execution data pushed to a Pushgateway, one group per execution.
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
  local body = "task_heartbeat_last_timestamp_seconds 1700000000\n" ..
    "task_heartbeat_interval_seconds 30\n" ..
    "task_progress_ratio " .. ((sent % 100) / 100) .. "\n" ..
    'task_execution_status{status="running"} 1\n'
  return wrk.format("PUT", "/metrics/job/heartbeat/execution_id/" .. id, {["Content-Type"] = "text/plain"}, body)
end
