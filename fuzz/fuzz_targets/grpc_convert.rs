//! `grpc_convert`: every input through `rtcd::fuzzing::client_signal` (see its documentation for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rtcd::fuzzing::client_signal(data);
});
