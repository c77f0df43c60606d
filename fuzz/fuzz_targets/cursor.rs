//! A feed cursor (`?after=`) on any string: parsing never panics, and what
//! parses prints back to a cursor that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderlog::projections::query::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = s.parse::<Cursor>() {
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
    }
});
