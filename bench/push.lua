-- wrk: the same per-execution data pushed to a Pushgateway, one group per execution.
DEFAULT_EXECUTIONS = 1000
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "share.lua")
local sent = 0

request = function()
  sent = sent + 1
  local id = execution_id("bench-", sent)
  local body = "task_heartbeat_last_timestamp_seconds 1700000000\n" ..
    "task_heartbeat_interval_seconds 30\n" ..
    "task_progress_ratio " .. ((sent % 100) / 100) .. "\n" ..
    'task_execution_status{status="running"} 1\n'
  return wrk.format("PUT", "/metrics/job/heartbeat/execution_id/" .. id, {["Content-Type"] = "text/plain"}, body)
end
