//! The `portcullis` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

/// mimalloc rather than glibc malloc: under the soak's churn (fresh tokens, key rotations,
/// policy reloads every 10 s) glibc's per-thread arenas kept growing RSS in steps; see
/// docs/performance.md, "Soak".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
