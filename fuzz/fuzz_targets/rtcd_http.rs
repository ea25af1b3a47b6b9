//! `rtcd_http`: every input through `rtcd::fuzzing::http_request` (see its documentation for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rtcd::fuzzing::http_request(data);
});
