//! The storage layer beneath `log` and `webhook`: what both keep in the embedded store (fjall)
//! is encoded by the same helpers, so a key means the same thing wherever it is read.

pub mod keys;
