-- wrk script for full.sh: every request carries `x-tenant-id: tenant-N`, N rotating over the
-- tenant count given after `--` (default 10000). The requests are formatted once in init, so
-- the per-request cost in wrk is a table lookup, the same for every target.
local reqs = {}
local n = 0
local i = 0

function init(args)
    n = tonumber(args[1]) or 10000
    for k = 1, n do
        reqs[k] = wrk.format("GET", "/", { ["x-tenant-id"] = "tenant-" .. k })
    end
end

function request()
    i = i % n + 1
    return reqs[i]
end
