//! `Personal<T>`: the one wrapper every piece of personal data travels in.
//!
//! Its `Debug` and `Display` print `[redacted]`, so personal data cannot reach a
//! log line, a panic message or an error by accident, and the inner value is
//! zeroed when dropped. It deliberately implements neither `Serialize` nor
//! `Deserialize`: the only ways out are [`Personal::expose`] at the sealing
//! boundary (`crypto`) and at the API's explicit reveal.

use std::fmt;

use zeroize::Zeroize;

/// Personal data; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct Personal<T: Zeroize>(T);

impl<T: Zeroize> Personal<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The plaintext. Call sites are the sealing code and explicit reveals only.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> Drop for Personal<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Personal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T: Zeroize> fmt::Display for Personal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Implements `Debug` as `Type([redacted])` for types that hold personal data.
#[macro_export]
macro_rules! redacted_debug {
    ($($t:ty),+ $(,)?) => {$(
        impl ::std::fmt::Debug for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(concat!(stringify!($t), "([redacted])"))
            }
        }
    )+};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_print_the_value() {
        let p = Personal::new(String::from("Zhang San, 13800138000"));
        assert_eq!(format!("{p:?}"), "[redacted]");
        assert_eq!(format!("{p}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&p)), "Some([redacted])");
        assert_eq!(p.expose(), "Zhang San, 13800138000");
    }
}
