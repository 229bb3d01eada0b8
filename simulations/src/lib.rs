//! # tkms-simulations
//!
//! A seeded, deterministic discrete-event simulator that drives the real `tkms-crypto`
//! protocol code (DKG, resharing, threshold delegation) over a simulated network with
//! latency, loss, reordering, partitions, crashes and byzantine nodes.
//!
//! - [`sim`]: virtual clock, event queue, network model, crash schedule, per-node CPU queue.
//! - [`cpu`]: the CPU cost model of each protocol step, calibrated on the real code.
//! - [`dkg_node`]: a DKG/reshare participant as a state machine.
//! - [`delegation`]: a manager fanning delegation requests out to share holders, with the
//!   real collector and circuit breakers.
//! - [`handover`]: a reshare under load, with manager and node crashes, driving the real epoch
//!   holder, collector and handover decision.
//! - [`scenario`]: ready-made runs (DKG, reshare, delegation) and their metrics.
//! - [`invariants`]: the properties checked at the end of a run.

pub mod connect;
pub mod cpu;
pub mod delegation;
pub mod dkg_node;
pub mod handover;
pub mod invariants;
pub mod plot;
pub mod scenario;
pub mod sim;
pub mod sweep;
