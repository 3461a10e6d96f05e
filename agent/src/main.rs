fn main() -> std::process::ExitCode {
    tailrace::cli::main()
}
