//! Small groups: a bounded set of members that talk directly, relay for each other, and notice
//! when they are split and when they meet again.
//!
//! [`roster`] says who is in a group (signed by its owner, or admitted by the web of trust);
//! [`swim`] is the failure detector: which members are alive, suspected or gone, and whether
//! this member's side of the group is cut off.

pub mod roster;
pub mod swim;
