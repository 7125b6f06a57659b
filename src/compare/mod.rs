//! Two models on the same images (`--vs`): a checkpoint against its fine-tune, a model against its
//! export. Both run through the one contract, each with its own preprocessing; what is compared
//! is their predictions and their maps at stages that correspond.
//!
//! May use: `contract`, `explain`, `render`, `cam`. The front ends (`explain --vs`, `sweep --vs`,
//! the debugger) take a [`Pair`] and what [`stats`] says of two maps.

mod explain;
mod labels;
mod stages;
pub mod stats;

pub use explain::{explain_pair, Comparison, StageComparison};
pub use labels::check_labels;
pub use stages::{pair_stages, StagePair};
