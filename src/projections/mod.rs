//! Read models built from the log: the shipping view (per logistics provider)
//! and the merchant view (per merchant), each with a change feed, kept in
//! RocksDB by the [`projector`].
//!
//! Personal fields are never stored opened here: the views keep the sealed
//! fields of the `OrderPlaced` event, under the order's key, and open them on
//! read; erasure drops them from the rows.

pub mod model;
pub mod projector;
pub mod query;
pub mod subjects;

pub use model::{ChangeKind, FeedEntry, ProjectedOrder, ViewStatus};
pub use projector::{Assignment, Projector, ProjectorConfig, ProjectorStatus};
pub use query::{Cursor, ViewDigest};
