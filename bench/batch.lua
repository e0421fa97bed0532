-- wrk: BATCH heartbeats per request to /api/v1/monitoring/heartbeats.
-- Each wrk thread takes its own share of the execution ids (setup numbers the threads),
-- as distinct tasks do: threads in step on the same ids would race on one execution,
-- which one task sending one heartbeat at a time never does.
local threads = tonumber(os.getenv("THREADS") or "1")
local created = 0
function setup(thread)
  thread:set("first", created)
  created = created + 1
end
local executions = tonumber(os.getenv("EXECUTIONS") or "10000")
local batch = tonumber(os.getenv("BATCH") or "500")
local sent = 0

request = function()
  local items = {}
  for i = 1, batch do
    sent = sent + 1
    local id = "batch-" .. (first + threads * (sent % math.floor(executions / threads)))
    items[i] = '{"execution_id":"' .. id .. '","status":"running","progress":{"percentage":' ..
      (sent % 100) .. '},"task_name":"bench-' .. (sent % 10) .. '"}'
  end
  return wrk.format("POST", "/api/v1/monitoring/heartbeats", {["Content-Type"] = "application/json"},
    "[" .. table.concat(items, ",") .. "]")
end
