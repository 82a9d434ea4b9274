//! A group's signed roster: who is in it, who decides, and how big it may grow.
//!
//! A group is named by its [`GroupId`], the BLAKE3 hash of its owner's id and a nonce, so a
//! roster for a group can only come from that group's owner. The owner signs every version of
//! the roster; a higher `seq` replaces a lower one. Members are admitted in one of two ways
//! ([`Admission`]): only by the owner listing them, or also by the web of trust — a peer that the
//! checking node trusts within the given depth counts as a member without being listed, so a
//! group of friends admits a friend's friend without waiting for the owner. Either way the
//! group never holds more than `max_size` members (listed ones first), at most [`MAX_GROUP`].

use serde::{Deserialize, Serialize};

use crate::identity::{Keypair, PeerId, Signature, signed_message};

/// Most members a group can have: a full mesh of this many is 2,016 connections.
pub const MAX_GROUP: usize = 64;
const CONTEXT: &str = "spore/group/roster/v1";

/// A group's name: BLAKE3 of the owner's id and a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 32]);

impl GroupId {
    /// The id of `owner`'s group made with `nonce`.
    pub fn new(owner: &PeerId, nonce: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(CONTEXT.as_bytes());
        h.update(owner.as_bytes());
        h.update(&nonce.to_le_bytes());
        GroupId(*h.finalize().as_bytes())
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Who may be a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    /// Only those the owner lists.
    Owner,
    /// Those listed, and anyone the checking node trusts within this many vouches.
    TrustedWithin(u8),
}

/// Why a roster or a change to it was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterError {
    /// The signature is not the owner's.
    #[error("the roster is not signed by the group's owner")]
    BadSignature,
    /// The group id is not the owner's with this nonce.
    #[error("the group id does not belong to the roster's owner")]
    WrongOwner,
    /// More members than allowed.
    #[error("{found} members, at most {max} allowed")]
    TooMany {
        /// Members listed (or about to be).
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The member list is not sorted and free of repeats (or lists the owner).
    #[error("the member list is not sorted, has repeats or lists the owner")]
    BadList,
    /// Only the owner can change the roster.
    #[error("only the group's owner can change its roster")]
    NotOwner,
}

/// A signed version of a group's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    group: GroupId,
    owner: PeerId,
    nonce: u64,
    max_size: u16,
    admission: Admission,
    /// Listed members besides the owner, sorted.
    members: Vec<PeerId>,
    seq: u64,
    signature: Signature,
}

impl Roster {
    /// A new group of `owner`'s with nobody else in it yet.
    pub fn create(
        owner: &Keypair,
        nonce: u64,
        max_size: usize,
        admission: Admission,
    ) -> Result<Self, RosterError> {
        if !(1..=MAX_GROUP).contains(&max_size) {
            return Err(RosterError::TooMany {
                found: max_size,
                max: MAX_GROUP,
            });
        }
        let id = owner.peer_id();
        let mut roster = Roster {
            group: GroupId::new(&id, nonce),
            owner: id,
            nonce,
            max_size: max_size as u16,
            admission,
            members: Vec::new(),
            seq: 1,
            signature: Signature([0; 64]),
        };
        roster.sign(owner);
        Ok(roster)
    }

    fn signed_message(&self) -> Vec<u8> {
        signed_message(
            CONTEXT,
            &(
                &self.group,
                &self.owner,
                self.nonce,
                self.max_size,
                &self.admission,
                &self.members,
                self.seq,
            ),
        )
    }

    fn sign(&mut self, owner: &Keypair) {
        self.signature = owner.sign(&self.signed_message());
    }

    /// Checks the owner's signature, the group id and the bounds.
    pub fn verify(&self) -> Result<(), RosterError> {
        if GroupId::new(&self.owner, self.nonce) != self.group {
            return Err(RosterError::WrongOwner);
        }
        let max = usize::from(self.max_size).min(MAX_GROUP);
        if self.members.len() + 1 > max {
            return Err(RosterError::TooMany {
                found: self.members.len() + 1,
                max,
            });
        }
        let sorted = self.members.windows(2).all(|w| w[0] < w[1]);
        if !sorted || self.members.contains(&self.owner) {
            return Err(RosterError::BadList);
        }
        self.owner
            .verify(&self.signed_message(), &self.signature)
            .map_err(|_| RosterError::BadSignature)
    }

    /// The next version with `member` listed, signed by `owner`.
    pub fn admit(&self, owner: &Keypair, member: PeerId) -> Result<Self, RosterError> {
        if owner.peer_id() != self.owner {
            return Err(RosterError::NotOwner);
        }
        let mut next = self.clone();
        if member == self.owner || next.members.binary_search(&member).is_ok() {
            return Ok(next);
        }
        if self.size() + 1 > usize::from(self.max_size) {
            return Err(RosterError::TooMany {
                found: self.size() + 1,
                max: usize::from(self.max_size),
            });
        }
        let at = next.members.partition_point(|m| *m < member);
        next.members.insert(at, member);
        next.seq += 1;
        next.sign(owner);
        Ok(next)
    }

    /// The next version without `member`, signed by `owner`.
    pub fn remove(&self, owner: &Keypair, member: &PeerId) -> Result<Self, RosterError> {
        if owner.peer_id() != self.owner {
            return Err(RosterError::NotOwner);
        }
        let mut next = self.clone();
        next.members.retain(|m| m != member);
        next.seq += 1;
        next.sign(owner);
        Ok(next)
    }

    /// Whether this (verified) roster should replace `other`: the same group, a higher `seq`.
    pub fn supersedes(&self, other: &Roster) -> bool {
        self.group == other.group && self.seq > other.seq
    }

    /// Whether `peer` is a member: the owner, listed, or — if the group admits by the web of
    /// trust and there is room — trusted within the depth by `trusts` (the checking node's own
    /// web of trust).
    pub fn admits(&self, peer: &PeerId, trusts: impl Fn(&PeerId, u8) -> bool) -> bool {
        if *peer == self.owner || self.members.binary_search(peer).is_ok() {
            return true;
        }
        match self.admission {
            Admission::Owner => false,
            Admission::TrustedWithin(depth) => trusts(peer, depth),
        }
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Its owner.
    pub fn owner(&self) -> PeerId {
        self.owner
    }

    /// The owner and the listed members, the owner first.
    pub fn listed(&self) -> impl Iterator<Item = &PeerId> {
        std::iter::once(&self.owner).chain(&self.members)
    }

    /// Members listed, the owner included.
    pub fn size(&self) -> usize {
        self.members.len() + 1
    }

    /// Most members.
    pub fn max_size(&self) -> usize {
        usize::from(self.max_size)
    }

    /// How members are admitted.
    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// The version.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Keypair {
        Keypair::from_secret_bytes([n; 32])
    }

    #[test]
    fn the_owner_admits_and_removes_and_every_version_verifies() {
        let owner = key(1);
        let r1 = Roster::create(&owner, 7, 3, Admission::Owner).unwrap();
        r1.verify().unwrap();
        let r2 = r1.admit(&owner, key(3).peer_id()).unwrap();
        let r3 = r2.admit(&owner, key(2).peer_id()).unwrap();
        r3.verify().unwrap();
        assert!(r3.supersedes(&r2) && r2.supersedes(&r1) && !r1.supersedes(&r3));
        assert_eq!(r3.size(), 3);
        assert!(r3.admits(&key(2).peer_id(), |_, _| false));
        assert!(!r3.admits(&key(9).peer_id(), |_, _| true), "owner-only");
        // Full at 3.
        assert_eq!(
            r3.admit(&owner, key(4).peer_id()),
            Err(RosterError::TooMany { found: 4, max: 3 })
        );
        let r4 = r3.remove(&owner, &key(3).peer_id()).unwrap();
        r4.verify().unwrap();
        assert!(!r4.admits(&key(3).peer_id(), |_, _| false));
        // Nobody else can change it.
        assert_eq!(
            r4.admit(&key(5), key(5).peer_id()),
            Err(RosterError::NotOwner)
        );
    }

    #[test]
    fn forged_or_tampered_rosters_are_refused() {
        let owner = key(1);
        let r = Roster::create(&owner, 7, 8, Admission::TrustedWithin(2))
            .unwrap()
            .admit(&owner, key(2).peer_id())
            .unwrap();
        let mut tampered = r.clone();
        tampered.members.push(key(9).peer_id());
        tampered.members.sort();
        assert_eq!(tampered.verify(), Err(RosterError::BadSignature));
        let mut stolen = r.clone();
        stolen.owner = key(9).peer_id();
        assert_eq!(stolen.verify(), Err(RosterError::WrongOwner));
        let mut unsorted = r.clone();
        unsorted.members = vec![key(3).peer_id(), key(2).peer_id()];
        unsorted.members.sort_by(|a, b| b.cmp(a));
        assert_eq!(unsorted.verify(), Err(RosterError::BadList));
        // The web of trust admits within its depth.
        let friend = key(4).peer_id();
        assert!(r.admits(&friend, |p, d| *p == friend && d == 2));
        assert!(!r.admits(&friend, |_, _| false));
    }

    #[test]
    fn a_roster_round_trips_through_postcard() {
        let owner = key(1);
        let r = Roster::create(&owner, 1, 6, Admission::Owner)
            .unwrap()
            .admit(&owner, key(2).peer_id())
            .unwrap();
        let bytes = postcard::to_allocvec(&r).unwrap();
        let back: Roster = postcard::from_bytes(&bytes).unwrap();
        back.verify().unwrap();
        assert_eq!(back, r);
        assert!(Roster::create(&owner, 1, MAX_GROUP + 1, Admission::Owner).is_err());
    }
}
