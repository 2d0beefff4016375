#![no_main]
//! Fuzz target: `rebeam_fuzz::controller::request` (see there for what it decodes).

libfuzzer_sys::fuzz_target!(
    init: rebeam_fuzz::seeds::write_if_asked("controller_requests"),
    |data: &[u8]| rebeam_fuzz::controller::request(data)
);
