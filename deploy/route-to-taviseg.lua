-- Orthanc auto-routing to the taviseg node (install with "LuaScripts" in orthanc.json).
--
-- Every X-ray angiography / fluoroscopy image stored in Orthanc over DICOM is forwarded to
-- the modality "taviseg" (declared in "DicomModalities"). Objects the node sends back (SEG,
-- SR, presentation states: other modalities, and calling AE title TAVISEG) are not forwarded,
-- so there is no loop. Forwarding runs as an asynchronous Orthanc job: the Lua engine never
-- blocks on the network, and a failed job can be resubmitted from Orthanc's job list.

NODE_MODALITY = 'taviseg'   -- key in "DicomModalities"
NODE_AET = 'TAVISEG'        -- the node's AE title (never route its own results back)
ROUTED_MODALITIES = { XA = true, RF = true }

function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin ~= nil and origin['RemoteAet'] == NODE_AET then
    return
  end
  if not ROUTED_MODALITIES[tags['Modality']] then
    return
  end
  local body = DumpJson({ Resources = { instanceId }, Synchronous = false }, true)
  RestApiPost('/modalities/' .. NODE_MODALITY .. '/store', body)
end
