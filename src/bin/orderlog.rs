//! The `orderlog` binary: everything is in the library's [`orderlog::cli`].

fn main() -> std::process::ExitCode {
    orderlog::cli::run()
}
