#![no_main]
//! Fuzz target: `rebeam_fuzz::node::peer_stream` (see there for what it decodes).

libfuzzer_sys::fuzz_target!(
    init: rebeam_fuzz::seeds::write_if_asked("peer_frames"),
    |data: &[u8]| rebeam_fuzz::node::peer_stream(data)
);
