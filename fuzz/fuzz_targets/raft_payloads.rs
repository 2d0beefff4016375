#![no_main]
//! Fuzz target: `rebeam_fuzz::controller::raft_payload` (see there for what it decodes).

libfuzzer_sys::fuzz_target!(
    init: rebeam_fuzz::seeds::write_if_asked("raft_payloads"),
    |data: &[u8]| rebeam_fuzz::controller::raft_payload(data)
);
