//! End-to-end tests: each test spawns the real `mecha` binary on its own loopback ports
//! (`mecha_integration::Sidecar`) and drives it with the generated tonic client, raw h2 and
//! HTTP/1.1, and the CLI. One test binary keeps link time down; tests run in parallel.

mod admin;
mod bad_input;
mod bounds;
mod cli;
mod configuration;
mod cross_stack;
mod hello_and_unimplemented;
mod lock_sequencer;
mod pubsub;
mod secrets;
mod state;
