//! Replicated documents: CRDTs that converge without a coordinator.

pub mod reconcile;
pub mod text;
