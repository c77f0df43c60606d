//! The per-order hash chain: each event names its order's next sequence and
//! the hash of the order's previous record, and only the first event places
//! the order. One rule, read three ways: the projector refuses a record that
//! does not continue its order ([`crate::projections::model::check`]), the
//! order state leaves it to audit ([`crate::service::state`]), and `verify`
//! reports it ([`crate::audit::verify`]).
//!
//! Pure: no I/O, nothing decoded here.

use super::RecordHash;

/// Where an order's chain stands: its last event's sequence (0 before the
/// placement) and its last record's hash (zeros before the placement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub sequence: u64,
    pub hash: RecordHash,
}

impl Head {
    /// An order with no event yet.
    pub const EMPTY: Head = Head {
        sequence: 0,
        hash: [0; 32],
    };
}

/// How a record stands to its order's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The order's next event.
    Next,
    /// A sequence the order already has (a duplicate, or a conflict).
    Repeat,
    /// A later sequence than the next: events `expected..sequence` are
    /// missing.
    Gap { expected: u64 },
    /// The next sequence, naming a hash that is not the previous record's.
    WrongHash,
    /// A placement after the first event, or a first event that is not a
    /// placement (the sequence and hash otherwise continue the chain).
    Misplaced,
}

/// How a record with `sequence` and `prev_hash` (a placement or not) stands
/// to an order whose chain is at `head`.
pub fn link(head: Head, sequence: u64, prev_hash: &RecordHash, placement: bool) -> Link {
    let expected = head.sequence + 1;
    if sequence < expected {
        Link::Repeat
    } else if sequence > expected {
        Link::Gap { expected }
    } else if *prev_hash != head.hash {
        Link::WrongHash
    } else if placement != (sequence == 1) {
        Link::Misplaced
    } else {
        Link::Next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sequence: u64, hash: u8) -> Head {
        Head {
            sequence,
            hash: [hash; 32],
        }
    }

    #[test]
    fn a_placement_starts_the_chain_and_each_event_names_the_one_before() {
        assert_eq!(link(Head::EMPTY, 1, &[0; 32], true), Link::Next);
        assert_eq!(link(at(1, 7), 2, &[7; 32], false), Link::Next);
    }

    #[test]
    fn every_way_a_record_can_miss_the_chain_is_told_apart() {
        assert_eq!(link(at(3, 7), 3, &[7; 32], false), Link::Repeat);
        assert_eq!(link(at(3, 7), 1, &[0; 32], true), Link::Repeat);
        assert_eq!(
            link(at(3, 7), 6, &[7; 32], false),
            Link::Gap { expected: 4 }
        );
        assert_eq!(link(at(3, 7), 4, &[8; 32], false), Link::WrongHash);
        assert_eq!(link(at(3, 7), 4, &[7; 32], true), Link::Misplaced);
        assert_eq!(link(Head::EMPTY, 1, &[0; 32], false), Link::Misplaced);
        assert_eq!(link(Head::EMPTY, 1, &[1; 32], true), Link::WrongHash);
    }
}
