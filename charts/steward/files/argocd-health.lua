-- Argo CD health of a Steward ModelDeployment (steward.dev), read from the conditions the operator writes for
-- kstatus (Ready, Reconciling, Stalled) so that Argo CD and Flux agree; status fields only add to the message.
-- Only Lua 5.1's base and table libraries are used: Argo CD opens no string library for a script taken from
-- argocd-cm unless useOpenLibs is set.
local hs = {}

local function health(status, message)
  hs.status = status
  hs.message = message
  return hs
end

local function condition(conditions, kind)
  for _, found in ipairs(conditions or {}) do
    if found.type == kind then
      return found
    end
  end
  return nil
end

local function holds(found)
  return found ~= nil and found.status == "True"
end

-- What a condition says, in its own words where it has them.
local function words(found)
  if found.message ~= nil and found.message ~= "" then
    return found.message
  end
  return found.reason or found.type
end

local wanted = "the model"
if obj.spec ~= nil and obj.spec.model ~= nil and obj.spec.model.version ~= nil then
  wanted = obj.spec.model.version
end
local status = obj.status
local generation = obj.metadata and obj.metadata.generation

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  return health("Progressing", "being deleted; its serving objects go with it")
end
-- Nothing written yet: no status, or only what the API server may fill in before the operator first writes it.
if status == nil or (status.phase == nil and status.conditions == nil) then
  return health("Progressing", "waiting for the Steward operator to take up " .. wanted)
end
-- A status written for an older spec says nothing about the one Git now holds.
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration ~= generation then
  return health("Progressing", "waiting for the Steward operator to act on generation " .. tostring(generation) ..
    " (spec.model " .. wanted .. "); status is for generation " .. tostring(status.observedGeneration))
end

local stalled = condition(status.conditions, "Stalled")
local reconciling = condition(status.conditions, "Reconciling")
local ready = condition(status.conditions, "Ready")

if holds(stalled) then
  local message = words(stalled)
  local analysis = status.lastAnalysis
  -- Say why, when the rollback Git's version met was the decision engine's (it records the rule it applied).
  if stalled.reason == "RolledBack" and analysis ~= nil and analysis.decision == "rollback" and
      analysis.rule ~= nil and status.rolledBack ~= nil and analysis.time == status.rolledBack.since then
    message = message .. ". Why: " .. analysis.rule
  end
  return health("Degraded", message)
end
if holds(reconciling) then
  -- Paused where only a person moves it on: a release holding its stage, or a new version not started.
  local releasing = status.phase == "Validating" or status.phase == "Shadowing" or status.phase == "Canary"
  if status.paused == true and (releasing or reconciling.reason == "Paused") then
    return health("Suspended", words(reconciling))
  end
  return health("Progressing", words(reconciling))
end
if holds(ready) then
  local message = words(ready)
  local drifting = condition(status.conditions, "Drifting")
  if holds(drifting) then
    message = message .. "; " .. words(drifting)
  end
  return health("Healthy", message)
end
if ready ~= nil then
  return health("Progressing", words(ready))
end
return health("Progressing", "waiting for the Steward operator to report on " .. wanted)
