//! `rtcd_sdp`: every input through `rtcd::fuzzing::sdp_offer` (see its documentation for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rtcd::fuzzing::sdp_offer(data);
});
