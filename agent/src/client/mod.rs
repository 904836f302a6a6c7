//! tyrd's side of the fleet link: enrollment (key, CSR, Register) with trust
//! on first contact, the mTLS channel, reconnect backoff, and the Stream
//! session that sends spooled batches and discovered agents, and applies
//! what the server pushes (policies, agent overrides).

pub mod agents;
pub mod backoff;
pub mod channel;
pub mod enroll;
pub mod identity;
pub mod link;
pub mod policy;
pub mod refusal;
pub mod session;
pub mod trust;
