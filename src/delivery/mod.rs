//! Delivery bookkeeping: who still owes what, and what each sink is known to hold.
//!
//! The [`Tracker`] is the one owner of acknowledgement. The router registers every change
//! with the sinks it goes to and gets one [`AckToken`] per sink; the token travels in the sink
//! queue's slot (never in the public envelope), the driver hands finished slots back, and the
//! tracker alone decides what the delivered-state store records.

mod ack;

pub use ack::{AckToken, ObjectId, Tracker};
