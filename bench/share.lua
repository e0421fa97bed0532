-- Loaded by the wrk scripts: each wrk thread takes its own share of the execution ids
-- (setup numbers the threads), as distinct tasks do. Threads in step on the same ids would
-- race on one execution, which one task sending one heartbeat at a time never does.
local threads = tonumber(os.getenv("THREADS") or "1")
local executions = tonumber(os.getenv("EXECUTIONS") or DEFAULT_EXECUTIONS)
local created = 0

function setup(thread)
  thread:set("first", created)
  created = created + 1
end

-- The id of the n-th execution of this thread's share, spelled prefix .. number.
function execution_id(prefix, n)
  return prefix .. (first + threads * (n % math.floor(executions / threads)))
end
