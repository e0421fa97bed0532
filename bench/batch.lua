-- wrk: BATCH heartbeats per request to /api/v1/monitoring/heartbeats.
DEFAULT_EXECUTIONS = 10000
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "share.lua")
local batch = tonumber(os.getenv("BATCH") or "500")
local sent = 0

request = function()
  local items = {}
  for i = 1, batch do
    sent = sent + 1
    local id = execution_id("batch-", sent)
    items[i] = '{"execution_id":"' .. id .. '","status":"running","progress":{"percentage":' ..
      (sent % 100) .. '},"task_name":"bench-' .. (sent % 10) .. '"}'
  end
  return wrk.format("POST", "/api/v1/monitoring/heartbeats", {["Content-Type"] = "application/json"},
    "[" .. table.concat(items, ",") .. "]")
end
