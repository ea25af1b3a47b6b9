//! `sdp_policy`: every input through `rtcd_proxy::fuzzing::sdp_policy` (see its documentation for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rtcd_proxy::fuzzing::sdp_policy(data);
});
