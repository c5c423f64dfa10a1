-- Argo CD health check for hookline.dev WebhookSource, WebhookSubscription and WebhookReplay.
-- Healthy: the controller has seen the current generation, Ready is True and Healthy (a
-- subscription's deliveries, a source's handlers') is True. Degraded: Ready or Healthy is False
-- (the reason says why).
-- Suspended: the target is paused. Progressing: the controller has not caught up yet.
-- A replay: Healthy once Complete, Degraded when Failed, Progressing until then.
local hs = { status = "Progressing", message = "Waiting for the Hookline controller" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  return hs
end
local ready, healthy, complete, failed
for _, condition in ipairs(obj.status.conditions or {}) do
  if condition.type == "Ready" then ready = condition end
  if condition.type == "Healthy" then healthy = condition end
  if condition.type == "Complete" then complete = condition end
  if condition.type == "Failed" then failed = condition end
end
local function describe(condition)
  return (condition.reason or "Unknown") .. ": " .. (condition.message or "")
end
if failed ~= nil and failed.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(failed)
  return hs
end
if complete ~= nil then
  hs.status = (complete.status == "True") and "Healthy" or "Progressing"
  hs.message = describe(complete)
  return hs
end
if ready == nil then
  return hs
end
if ready.status ~= "True" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end
if healthy ~= nil and healthy.status ~= "True" then
  hs.status = (healthy.reason == "Paused") and "Suspended" or "Degraded"
  hs.message = describe(healthy)
  return hs
end
hs.status = "Healthy"
hs.message = ready.message or "Ready"
return hs
