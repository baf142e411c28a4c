//! One module per `iptrace` subcommand. Each exposes `Args` (clap) and `run(args) -> Result<ExitCode>`.
