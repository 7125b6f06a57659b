//! A data set, not one image: listing a folder, an ImageFolder tree or a CSV with its boxes and
//! masks ([`source`]), carrying the object onto the map's frame ([`region`]), scoring whether the
//! map is on it ([`localisation`]), the sweep itself ([`sweep`]), its rows ([`row`]) and the
//! files they live in ([`results`]), and splitting one sweep over many processes ([`shard`]).
//!
//! May use: `engine`, `cam`, `metrics`, `contract`, `preprocess`, `render`, `compare` (`--vs`). The front ends
//! (`camscope sweep`, `merge`, the debugger's table) drive it; it never prints.

pub mod localisation;
pub mod region;
pub mod results;
pub mod row;
pub mod shard;
pub mod source;
pub mod sweep;

pub use region::{PixelBox, Region};
pub use row::{Change, Columns, Ranked, Row, Versus};
pub use shard::Shard;
pub use source::{Annotations, DataSet, Item, Layout, Skipped};
pub use sweep::{Progress, SweepOptions, Sweeper};
