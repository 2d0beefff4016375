#![no_main]
//! Fuzz target: `rebeam_fuzz::node::gateway_request` (see there for what it decodes).

libfuzzer_sys::fuzz_target!(
    init: rebeam_fuzz::seeds::write_if_asked("gateway_requests"),
    |data: &[u8]| rebeam_fuzz::node::gateway_request(data)
);
