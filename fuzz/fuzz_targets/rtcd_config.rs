//! `rtcd_config`: every input through `rtcd::fuzzing::config` (see its documentation for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rtcd::fuzzing::config(data);
});
