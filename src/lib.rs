//! The `triggerfish` application: wiring of channel, dispatcher and ingress into one
//! server ([`app`]). The binary (`src/main.rs`) parses flags and calls into this; the
//! end-to-end tests drive the same code in-process.

pub mod admin;
pub mod admin_auth;
pub mod app;
pub mod reload;
pub mod status;
