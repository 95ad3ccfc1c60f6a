//! fake-smolvm: a test double of the smolvm CLI. See `bot_bottle_smolvm::fake`.

fn main() -> std::process::ExitCode {
    bot_bottle_smolvm::fake::main()
}
