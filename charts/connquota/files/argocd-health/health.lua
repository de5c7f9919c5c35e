-- Argo CD health check for connquota.io ExchangeConnectionQuota and ExchangeEgressPool.
-- Reads only spec.paused, metadata.generation and status (observedGeneration, conditions).
local hs = { status = "Progressing", message = "Waiting for the connquota operator" }

local function condition(conditions, kind)
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.spec ~= nil and obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = "Paused: the operator keeps the fleet as it is"
  return hs
end

if obj.status == nil or obj.status.conditions == nil then
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = obj.status.conditions
local stalled = condition(conditions, "Stalled")
local degraded = condition(conditions, "Degraded")
local capacity = condition(conditions, "CapacityExceeded")
local reconciling = condition(conditions, "Reconciling")
local ready = condition(conditions, "Ready")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
elseif degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, "Degraded")
elseif capacity ~= nil and capacity.status == "True" then
  hs.status = "Degraded"
  hs.message = text(capacity, "Capacity exceeded: some streams are unserved")
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.message = text(reconciling, "Reconciling")
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
elseif ready ~= nil then
  hs.message = text(ready, "Not ready")
end
return hs
