//! The contract every part of Triggerfish shares.
//!
//! - [`config`] turns Knative Broker/Trigger YAML into a validated [`config::Config`].
//! - [`event`] is the CloudEvent model with its HTTP and JSON bindings, validation and
//!   the record format channels store.
//! - [`filter`] holds trigger filters, compiled once per config load.
//! - [`delivery`] decides retries and backoff as plain values.
//! - [`channel`] is the storage boundary ([`channel::EventLog`]) and its backends.
//! - [`telemetry`] names every metric and sets up logging.
//! - [`budget`] is the one account of event bytes held in memory.
//! - [`audit`] bounds the audit log's lines per second.
//! - [`watched`] tells when a file read at start (a certificate, a token) changed.
//!
//! The ingress and dispatcher crates depend on this one and never on each other.

pub mod audit;
pub mod budget;
pub mod channel;
pub mod config;
pub mod delivery;
pub mod event;
pub mod filter;
pub mod telemetry;
pub mod watched;
