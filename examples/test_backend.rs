//! The loopback test model server, standalone: for the editor clients' tests.
//!
//! `cargo run --example test_backend -- [127.0.0.1:PORT]` prints `listening on http://…` and
//! serves until stdin closes. Steer it with `POST /_test/fault {"model": "…", "fault": {"kind":
//! "hang_before_first_token"}}` and read what it received at `GET /_test/requests`.

#[path = "../tests/support/backend.rs"]
mod backend;

use std::io::Read;

fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let server = backend::TestBackend::start_on(&address);
    println!("listening on {}", server.url());
    // Serve until the parent closes stdin (or the process is killed).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}
