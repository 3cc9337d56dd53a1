//! ringmx-loadgen: placeholder until the load generator lands.
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    eprintln!("ringmx-loadgen: not built yet");
    std::process::exit(1);
}
