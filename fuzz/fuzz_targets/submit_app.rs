#![no_main]
//! Fuzz target: `rebeam_fuzz::controller::submit_app` (see there for what it decodes).

libfuzzer_sys::fuzz_target!(
    init: rebeam_fuzz::seeds::write_if_asked("submit_app"),
    |data: &[u8]| rebeam_fuzz::controller::submit_app(data)
);
