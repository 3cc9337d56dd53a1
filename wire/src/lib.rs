//! SMTP wire helpers with no I/O and no dependencies, shared by the ringmx server (its
//! fault-injecting driver), its tests, fuzz targets and benchmarks, and the load generator:
//!
//! - [`reply`]: an incremental reply reader and validator (RFC 5321 4.2);
//! - [`stuff`]: dot-stuffing of DATA (RFC 5321 4.5.2);
//! - [`rng`]: the xorshift64* generator behind every seeded choice.

pub mod reply;
pub mod rng;
pub mod stuff;

pub use reply::{check_replies, Reply, ReplyError, ReplyReader, Strictness};
pub use rng::XorShift64Star;
pub use stuff::{dot_stuff, DotStuffer};
