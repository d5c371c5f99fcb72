#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fschain_fuzz::signed_note(data));
