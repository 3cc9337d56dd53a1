//! ringmx-loadgen: drives persistent SMTP sessions against any server and reports throughput and
//! latency percentiles (HdrHistogram), with wrk2's coordinated-omission correction in open loop.
//! This file wires the parts together: parse the command line, probe the targets, run one event
//! loop per thread with its share of the connections, then print the summary and write the JSON.
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

mod cli;
mod client;
mod facts;
mod message;
mod pacer;
mod plan;
mod probe;
mod proxy;
mod report;
mod run;
mod stats;
mod tls;

use clap::Parser;

/// Parses the command line, runs the load and maps failures to exit statuses.
fn main() {
    let interrupted = match run::install_sigint() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringmx-loadgen: cannot install the Ctrl-C handler: {e}");
            std::process::exit(1);
        }
    };
    let argv: Vec<String> = std::env::args().collect();
    let args = cli::Args::parse();
    let settings = match cli::Settings::from_args(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringmx-loadgen: {e}");
            std::process::exit(2);
        }
    };
    match run::run(settings, argv, interrupted) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("ringmx-loadgen: {e}");
            std::process::exit(1);
        }
    }
}
