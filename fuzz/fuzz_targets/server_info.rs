//! `/server_info` body → `parse_server_info`, and what the checks read from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_proxy_agent::observe::envoy_admin::{parse_proto_duration, parse_server_info};

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = parse_server_info(data) {
        let _ = info.version_number();
        let _ = info.state.as_str();
        let _ = info.node.metadata_str("TRAFFICDIRECTOR_NETWORK_NAME");
        let _ = parse_proto_duration(&info.command_line_options.file_flush_interval);
    }
});
