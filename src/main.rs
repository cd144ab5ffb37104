//! The `redsink` binary: parses the command line, sets up logging and signals, and
//! calls the library. `anyhow` lives here and in `cli/` only.

mod cli;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc: allocation is a large share of decoding (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // TLS to Redis (rediss://) uses rustls, which needs a process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = cli::Cli::parse();
    cli::init_tracing(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the tokio runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(args.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: a JSON log gets an ERROR record, a terminal or text log one line. A
            // closed stderr is no reason to panic (exit code 101): the code says it.
            // Each cause once, a Postgres error in Postgres' words (`error_text`).
            let text = redsink::pipeline::error_text(e.as_ref());
            match args.log_format {
                cli::LogFormat::Json => tracing::error!("{text}"),
                cli::LogFormat::Text => {
                    let _ = writeln!(std::io::stderr(), "error: {text}");
                }
            }
            ExitCode::FAILURE
        }
    }
}
