#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fschain_fuzz::chunk_meta(data));
