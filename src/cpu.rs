//! The CPU features this build is compiled to use (`.cargo/config.toml`
//! turns on AES-NI, PCLMULQDQ, SSSE3 and SSE4.1 for AES-SIV's speed, and
//! SSE4.2 for RocksDB's CRC32C). A CPU
//! without one of them would die with SIGILL at the first such instruction,
//! so the binary checks them first and names what is missing.

/// The target features this build was compiled with that this CPU lacks.
pub fn missing_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 1, ECX: read from the CPU itself (the standard library's
        // detection answers "yes" for any feature compiled in).
        let ecx = std::arch::x86_64::__cpuid(1).ecx;
        [
            ("aes", cfg!(target_feature = "aes"), 25),
            ("pclmulqdq", cfg!(target_feature = "pclmulqdq"), 1),
            ("ssse3", cfg!(target_feature = "ssse3"), 9),
            ("sse4.1", cfg!(target_feature = "sse4.1"), 19),
            ("sse4.2", cfg!(target_feature = "sse4.2"), 20),
        ]
        .into_iter()
        .filter(|(_, compiled_in, bit)| *compiled_in && (ecx >> bit) & 1 == 0)
        .map(|(name, ..)| name)
        .collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// Why this build cannot run on this CPU, if it cannot.
pub fn check() -> Result<(), String> {
    let missing = missing_features();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "this CPU lacks {}, which this build of orderlog was compiled to use \
         (.cargo/config.toml's rustflags); build it on this machine without those \
         target features",
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_build_machine_has_what_the_build_uses() {
        assert_eq!(super::check(), Ok(()));
    }
}
