//! triage: routes each editor request to the right local model — fast, coder or heavy — within
//! the GPU memory that is really free.
//!
//! The flow of one request, one module per stage (see ARCHITECTURE.md):
//! `analyze` (what is asked) → `route` (which model, given `vram` and `config`).
//! `eval` scores routing on labelled data; `cli` is the command line.

pub mod analyze;
pub mod cli;
pub mod config;
pub mod eval;
pub mod route;
pub mod vram;
