//! The `herald` binary: everything lives in the library; this is only the edge.

fn main() -> std::process::ExitCode {
    herald::cli::main()
}
