//! `herald bench`: load generators that drive a running Herald over real sockets and report
//! what they measured. Scenarios live one per file.

pub mod webhooks;
