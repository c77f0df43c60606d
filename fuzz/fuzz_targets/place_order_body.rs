//! The body of `POST /v1/orders` on any bytes a client could send: parsing
//! and validation never panic, and a refusal is always 400 (syntax) or 422
//! (shape or a value).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = orderlog::api::orders::parse_place_order(data) {
        let status = e.status.as_u16();
        assert!(
            status == 400 || status == 422,
            "a bad body is the client's error, not {status}"
        );
    }
});
