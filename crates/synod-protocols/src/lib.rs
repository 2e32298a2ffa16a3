//! synod's protocols as pure, deterministic, sans-IO state machines.
pub mod sansio;
pub use sansio::{Envelope, Instant, Node, NodeId, NodeOutput, Output, MS};
