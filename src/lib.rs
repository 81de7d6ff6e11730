//! triage: routes each editor request to the right local model — fast, coder or heavy — within
//! the GPU memory that is really free.
//!
//! The flow of one request, one module per stage (see ARCHITECTURE.md):
//! `analyze` (what is asked) → `route` (which model, given `vram` and `config`) → `context`
//! (the prompt) → `backend` (the model server), run end to end by `engine`.
//! `eval` scores routing on labelled data; `feedback` records the user's overrides and keeps
//! what was learned from them; `cli` is the command line; `lsp` and `gateway` are the front
//! ends (editors, HTTP clients).

pub mod analyze;
pub mod backend;
pub mod cli;
pub mod config;
pub mod context;
pub mod engine;
pub mod eval;
pub mod feedback;
pub mod gateway;
pub mod lsp;
pub mod route;
pub mod vram;
