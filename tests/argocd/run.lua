-- Evaluates the chart's Argo CD health check against sample resources, as Argo CD does (the
-- script sees the resource as the global `obj` and returns {status, message}).
-- Usage: lua5.4 run.lua path/to/argocd-health.lua; prints "<case> <status>" per case.
local check = arg[1]
local function cond(type_, status, reason, message)
  return { type = type_, status = status, reason = reason, message = message }
end
local cases = {
  { "new", { metadata = { generation = 1 } } },
  { "stale-generation", { metadata = { generation = 2 }, status = { observedGeneration = 1,
      conditions = { cond("Ready", "True", "Ready", "ok") } } } },
  { "ready-source", { metadata = { generation = 1 }, status = { observedGeneration = 1,
      conditions = { cond("Ready", "True", "Receiving", "receiving at https://x/ingest/a/b"), cond("SecretResolved", "True", "SecretsResolved", "") } } } },
  { "secret-missing", { metadata = { generation = 1 }, status = { observedGeneration = 1,
      conditions = { cond("Ready", "False", "SecretNotFound", "Secret s not found"), cond("SecretResolved", "False", "SecretNotFound", "") } } } },
  { "healthy-subscription", { metadata = { generation = 3 }, status = { observedGeneration = 3,
      conditions = { cond("Ready", "True", "Ready", "delivering"), cond("Healthy", "True", "DeliveriesSucceeding", "") } } } },
  { "circuit-open", { metadata = { generation = 3 }, status = { observedGeneration = 3,
      conditions = { cond("Ready", "True", "Ready", "delivering"), cond("Healthy", "False", "CircuitOpen", "circuit open") } } } },
  { "paused", { metadata = { generation = 3 }, status = { observedGeneration = 3,
      conditions = { cond("Ready", "True", "Ready", "delivering"), cond("Healthy", "False", "Paused", "spec.paused is true") } } } },
  { "source-keys-blocked", { metadata = { generation = 1 }, status = { observedGeneration = 1,
      conditions = { cond("Ready", "True", "Receiving", "receiving"), cond("SecretResolved", "True", "SecretsResolved", ""),
        cond("Healthy", "False", "KeysBlocked", "handler ledger: 2 ordering keys wait behind a dead delivery") } } } },
  { "replay-enqueuing", { metadata = { generation = 1 }, status = { observedGeneration = 1,
      conditions = { cond("Complete", "False", "Enqueuing", "matched 10"), cond("Failed", "False", "Enqueuing", "") } } } },
  { "replay-complete", { metadata = { generation = 1 }, status = { observedGeneration = 1,
      conditions = { cond("Complete", "True", "Delivered", "matched 10"), cond("Failed", "False", "Delivered", "") } } } },
  { "replay-failed", { metadata = { generation = 1 }, status = { observedGeneration = 1,
      conditions = { cond("Complete", "False", "Failed", "x"), cond("Failed", "True", "Failed", "subscription crm is not configured") } } } },
}
for _, case in ipairs(cases) do
  obj = case[2]
  local hs = dofile(check)
  print(case[1] .. " " .. hs.status .. " " .. (hs.message or ""))
end
