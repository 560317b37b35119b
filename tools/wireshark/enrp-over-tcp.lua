-- Decode ENRP over TCP (port 9901) with Wireshark's own ENRP dissector.
--
-- Wireshark registers ENRP on SCTP and UDP only. hapool carries ENRP over
-- TCP, one message after another, each framed by the 16-bit length at
-- offset 2 of its header. This script hands each framed message to the
-- stock dissector:
--
--   tshark -X lua_script:tools/wireshark/enrp-over-tcp.lua -r capture.pcap
--
-- or copy it into Wireshark's personal plugins folder.

local enrp_over_tcp = Proto("enrp_over_tcp", "ENRP over TCP (hapool)")
local enrp

local function message_length(tvb, _, offset)
  return tvb(offset + 2, 2):uint()
end

local function dissect_message(tvb, pinfo, tree)
  -- Looked up on first use: the stock handle exists only once every
  -- dissector has registered, which is after this script is loaded.
  enrp = enrp or DissectorTable.get("sctp.ppi"):get_dissector(12)
  enrp:call(tvb, pinfo, tree)
  return tvb:len()
end

function enrp_over_tcp.dissector(tvb, pinfo, tree)
  dissect_tcp_pdus(tvb, tree, 4, message_length, dissect_message)
  return tvb:len()
end

DissectorTable.get("tcp.port"):add(9901, enrp_over_tcp)
