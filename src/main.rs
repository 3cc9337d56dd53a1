//! The ringmx server binary: configuration from `RINGMX_*` variables, then the server.

use std::process::ExitCode;

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "--help" || a == "-h")
    {
        println!("ringmx: inbound SMTP server. Configured only by environment variables:\n");
        for variable in ringmx::config::VARIABLES {
            let (name, default, meaning) = (variable.name, variable.default, variable.meaning);
            println!("  {name:<32} default {default:<22} {meaning}");
        }
        return ExitCode::SUCCESS;
    }
    match ringmx::config::from_env() {
        Ok(config) => ringmx::server::run(config),
        Err(error) => {
            eprintln!("ringmx: {error}");
            ExitCode::from(2)
        }
    }
}
