//! ringmx: an inbound SMTP server on io_uring for hosts that take bulk mail.
//!
//! The crate is split so that only the edges do I/O: `scan` and `proto` are pure (bytes in,
//! replies and spool actions out), `config` is the only reader of the environment, `spool` the
//! only writer of files, and the drivers the only users of sockets and rings.

pub mod config;
pub mod driver;
pub mod log;
pub mod proto;
pub mod scan;
pub mod server;
pub mod spool;
pub mod tls;
