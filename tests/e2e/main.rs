//! End-to-end tests: the real `herald` binary, real sockets. One test binary (one link) for
//! all of them; each test starts its own server on a free port with its own data directory.

mod api;
mod auth;
mod browser;
mod cli;
mod client;
mod cluster;
mod cluster_presence;
mod common;
mod compression;
mod console;
mod consumers;
mod docs;
mod durability;
mod flood;
mod hardening;
mod hooks;
mod limits;
mod one_door;
mod presence;
mod prometheus;
mod promises;
mod proxy;
mod pusher;
mod resume;
mod sentinel;
mod ship;
mod slow;
mod sse;
mod tls;
mod webhook_features;
mod webhooks;
mod ws;
