//! `proxy_message`: every input through `rtcd_proxy::fuzzing::client_message` (see its documentation for the input format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rtcd_proxy::fuzzing::client_message(data);
});
