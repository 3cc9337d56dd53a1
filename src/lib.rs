//! ringmx: an inbound SMTP server on io_uring for hosts that take bulk mail.
//!
//! The crate is split so that only the edges do I/O: `scan` and `proto` are pure (bytes in,
//! replies and delivery steps out), `config` is the only reader of the environment,
//! `delivery` decides where accepted messages go (Maildir files, or nowhere), `server` runs
//! the connections, and the drivers are the only users of sockets, files and rings.

pub mod config;
pub mod delivery;
pub mod driver;
pub mod envelope;
pub mod log;
pub mod metrics;
pub mod proto;
pub mod proxy;
pub mod scan;
pub mod server;
