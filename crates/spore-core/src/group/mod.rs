//! Small groups: a bounded set of members that talk directly, relay for each other, and notice
//! when they are split and when they meet again.
//!
//! [`swim`] is the failure detector: which members are alive, suspected or gone, and whether
//! this member's side of the group is cut off.

pub mod swim;
