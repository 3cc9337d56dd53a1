//! Delivery sinks: where an accepted message goes before the session may say 250.

pub mod jetstream;
