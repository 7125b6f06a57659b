//! The data set's table as state: every row that has arrived, which of them the filters let
//! through, in which order, and where the cursor is. No drawing and no computation beyond
//! sorting; rows can arrive at any time (the sweep fills the table while it is shown), and the
//! cursor stays on its row whatever moves around it.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use nucleo_matcher::pattern::{CaseMatching, Normalization, Pattern};
use nucleo_matcher::{Config, Matcher, Utf32Str};

use crate::dataset::{Change, Progress, Row};
use crate::preprocess::InputSize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Name,
    True,
    Predicted,
    /// The prediction's probability.
    Confidence,
    Loss,
    /// Share of the map inside the object.
    Energy,
    /// `sweep --vs`: how the prediction moved from model A to B.
    Change,
    /// `sweep --vs`: the correlation of the two models' maps.
    MapR,
}

impl Column {
    pub const ALL: [Column; 6] =
        [Column::Name, Column::True, Column::Predicted, Column::Confidence, Column::Loss, Column::Energy];
    /// The columns of a results file of `sweep --vs`.
    pub const WITH_VS: [Column; 8] = [
        Column::Name,
        Column::True,
        Column::Predicted,
        Column::Confidence,
        Column::Loss,
        Column::Energy,
        Column::Change,
        Column::MapR,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Name => "name",
            Column::True => "true",
            Column::Predicted => "predicted",
            Column::Confidence => "p",
            Column::Loss => "loss",
            Column::Energy => "in object",
            Column::Change => "A → B",
            Column::MapR => "maps r",
        }
    }

    /// The first press sorts the suspicious end first: the least sure, the highest loss, the map
    /// least on the object; names in alphabetical order.
    fn suspicious_first(self) -> bool {
        !matches!(self, Column::Loss)
    }
}

/// A map small enough to keep for every row (at most 56×56 bytes) and big enough for the preview.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumb {
    pub frame: InputSize,
    pub values: Vec<u8>,
}

impl Thumb {
    pub const SIZE: usize = 56;

    /// Box-averages a map in [0, 1] on `frame` down to fit [`Thumb::SIZE`]² with the frame's
    /// aspect ratio (a smaller frame is kept as it is); `None` if the map is not on `frame`.
    pub fn of(map: &[f32], frame: InputSize) -> Option<Thumb> {
        let InputSize { height: h, width: w } = frame;
        if h == 0 || w == 0 || map.len() != frame.area() {
            return None;
        }
        let scale = (Self::SIZE as f64 / h.max(w) as f64).min(1.0);
        let fit = |n: usize| ((n as f64 * scale).round() as usize).clamp(1, n);
        let (th, tw) = (fit(h), fit(w));
        let cells = |t: usize, n: usize, i: usize| (i * n / t, ((i + 1) * n / t).max(i * n / t + 1));
        let mut values = Vec::with_capacity(th * tw);
        for ty in 0..th {
            let (y0, y1) = cells(th, h, ty);
            for tx in 0..tw {
                let (x0, x1) = cells(tw, w, tx);
                let mut sum = 0.0;
                for y in y0..y1 {
                    sum += map[y * w + x0..y * w + x1].iter().sum::<f32>();
                }
                let mean = sum / ((y1 - y0) * (x1 - x0)) as f32;
                values.push((mean.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        Some(Thumb { frame: InputSize::new(th, tw), values })
    }

    /// Back to a map on `frame` (nearest neighbour: a preview, not a measurement).
    pub fn upsample(&self, frame: InputSize) -> Vec<f32> {
        let InputSize { height: th, width: tw } = self.frame;
        let InputSize { height: h, width: w } = frame;
        let mut out = Vec::with_capacity(h * w);
        for y in 0..h {
            let row = &self.values[(y * th / h) * tw..][..tw];
            out.extend((0..w).map(|x| row[x * tw / w] as f32 / 255.0));
        }
        out
    }
}

pub struct Entry {
    pub row: Row,
    pub thumb: Option<Arc<Thumb>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub wrong_only: bool,
    /// `sweep --vs`: only rows whose prediction moved this way.
    pub change: Option<Change>,
    pub true_class: Option<usize>,
    pub predicted: Option<usize>,
    /// Fuzzy, over the names.
    pub query: String,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

#[derive(Default)]
pub struct Table {
    entries: Vec<Entry>,
    by_path: HashMap<String, usize>,
    /// Column and whether it is reversed from its first press.
    pub sort: Option<(Column, bool)>,
    pub filter: Filter,
    /// Entries shown, in order.
    order: Vec<usize>,
    dirty: bool,
    /// Position in `order`.
    cursor: usize,
    /// First row drawn: kept by the drawing, so that the cursor moves inside a still page.
    pub offset: Cell<usize>,
    /// Errors and accuracy over every row (`done`: the number of rows).
    tally: Progress,
}

impl Table {
    /// Adds a row, or replaces the row of the same path (an error row redone).
    pub fn push(&mut self, row: Row, thumb: Option<Arc<Thumb>>) {
        let entry = Entry { row, thumb };
        match self.by_path.get(&entry.row.path) {
            Some(&i) => self.entries[i] = entry,
            None => {
                self.by_path.insert(entry.row.path.clone(), self.entries.len());
                self.entries.push(entry);
            }
        }
        self.dirty = true;
    }

    pub fn set_thumb(&mut self, path: &str, thumb: Arc<Thumb>) {
        if let Some(&i) = self.by_path.get(path) {
            self.entries[i].thumb = Some(thumb);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The columns to show: the comparison's too where rows have a second model's side.
    pub fn columns(&self) -> &'static [Column] {
        if self.entries.iter().any(|e| e.row.vs.is_some()) {
            &Column::WITH_VS
        } else {
            &Column::ALL
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Rows shown (after the filters).
    pub fn shown(&self) -> usize {
        self.order.len()
    }

    pub fn tally(&self) -> Progress {
        self.tally
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The entry under the cursor.
    pub fn selected(&self) -> Option<&Entry> {
        self.order.get(self.cursor).map(|&i| &self.entries[i])
    }

    /// The entry `delta` rows from the cursor in the table's order, made the selected one.
    pub fn step(&mut self, delta: isize) -> Option<&Entry> {
        let n = self.order.len() as isize;
        if n == 0 {
            return None;
        }
        let to = self.cursor as isize + delta;
        if !(0..n).contains(&to) {
            return None;
        }
        self.cursor = to as usize;
        self.selected()
    }

    /// Moves the cursor by `delta`, stopping at the ends.
    pub fn move_cursor(&mut self, delta: isize) {
        let last = self.order.len().saturating_sub(1) as isize;
        self.cursor = (self.cursor as isize + delta).clamp(0, last) as usize;
    }

    pub fn go_top(&mut self) {
        self.cursor = 0;
    }

    pub fn go_bottom(&mut self) {
        self.cursor = self.order.len().saturating_sub(1);
    }

    /// The entries from the `start`-th shown, at most `count`: only what is drawn is built.
    pub fn window(&self, start: usize, count: usize) -> impl Iterator<Item = &Entry> {
        self.order.iter().skip(start).take(count).map(|&i| &self.entries[i])
    }

    /// Sorts by `column`; the same column again reverses. The cursor goes to the top, where
    /// the most suspicious row now is.
    pub fn sort_by(&mut self, column: Column) {
        self.sort = match self.sort {
            Some((c, reversed)) if c == column => Some((c, !reversed)),
            _ => Some((column, false)),
        };
        self.dirty = true;
        self.refresh();
        self.cursor = 0;
    }

    pub fn set_filter(&mut self, filter: Filter) {
        if filter != self.filter {
            self.filter = filter;
            self.dirty = true;
        }
    }

    /// The most confused (true, predicted) pairs over every labelled row, with their counts,
    /// most first.
    pub fn confusions(&self) -> Vec<((usize, usize), usize)> {
        let mut counts: HashMap<(usize, usize), usize> = HashMap::new();
        for e in &self.entries {
            if let (Some(t), Some(p)) = (e.row.true_index, e.row.predicted()) {
                if t != p.index {
                    *counts.entry((t, p.index)).or_default() += 1;
                }
            }
        }
        let mut pairs: Vec<_> = counts.into_iter().collect();
        pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        pairs
    }

    /// Applies what changed since the last call (new rows, sort, filters); the cursor stays on
    /// its row if the row is still shown, else on the same position.
    pub fn refresh(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let selected = self.order.get(self.cursor).copied();
        self.tally = Progress::default();
        for e in &self.entries {
            self.tally.count(&e.row);
        }
        let mut scores: HashMap<usize, u32> = HashMap::new();
        let pattern = (!self.filter.query.is_empty())
            .then(|| Pattern::parse(&self.filter.query, CaseMatching::Smart, Normalization::Smart));
        let mut matcher = Matcher::new(Config::DEFAULT.match_paths());
        let mut buf = Vec::new();
        let f = &self.filter;
        self.order = (0..self.entries.len())
            .filter(|&i| {
                let row = &self.entries[i].row;
                if f.wrong_only && row.correct != Some(false) {
                    return false;
                }
                if f.change.is_some() && row.vs.as_ref().and_then(|v| v.change) != f.change {
                    return false;
                }
                if f.true_class.is_some() && row.true_index != f.true_class {
                    return false;
                }
                if f.predicted.is_some() && row.predicted().map(|p| p.index) != f.predicted {
                    return false;
                }
                match &pattern {
                    Some(p) => match p.score(Utf32Str::new(&row.path, &mut buf), &mut matcher) {
                        Some(score) => {
                            scores.insert(i, score);
                            true
                        }
                        None => false,
                    },
                    None => true,
                }
            })
            .collect();
        let entries = &self.entries;
        match self.sort {
            Some((column, reversed)) => self.order.sort_by(|&a, &b| {
                compare(&entries[a].row, &entries[b].row, column, reversed)
                    .then_with(|| entries[a].row.path.cmp(&entries[b].row.path))
            }),
            // Unsorted with a search: best matches first; else in the order the rows came.
            None if !scores.is_empty() => self.order.sort_by_key(|i| std::cmp::Reverse(scores[i])),
            None => {}
        }
        self.cursor = selected
            .and_then(|s| self.order.iter().position(|&i| i == s))
            .unwrap_or(self.cursor)
            .min(self.order.len().saturating_sub(1));
    }
}

/// Rows without the column's value (an error row, an image without a box) go last both ways.
fn compare(a: &Row, b: &Row, column: Column, reversed: bool) -> Ordering {
    fn by<T: PartialOrd>(a: Option<T>, b: Option<T>, descending: bool) -> Ordering {
        match (a, b) {
            (Some(a), Some(b)) => {
                let o = a.partial_cmp(&b).unwrap_or(Ordering::Equal);
                if descending {
                    o.reverse()
                } else {
                    o
                }
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
    let descending = column.suspicious_first() == reversed;
    match column {
        Column::Name => by(Some(&a.path), Some(&b.path), descending),
        Column::True => by(a.true_label.as_ref(), b.true_label.as_ref(), descending),
        Column::Predicted => by(a.predicted().map(|p| &p.label), b.predicted().map(|p| &p.label), descending),
        Column::Confidence => by(a.predicted().map(|p| p.prob), b.predicted().map(|p| p.prob), descending),
        Column::Loss => by(a.loss, b.loss, descending),
        Column::Energy => by(a.energy_in_object, b.energy_in_object, descending),
        Column::Change => by(change_rank(a), change_rank(b), descending),
        Column::MapR => {
            by(a.vs.as_ref().and_then(|v| v.map_r), b.vs.as_ref().and_then(|v| v.map_r), descending)
        }
    }
}

/// What a fine-tune's author looks at first: what it broke, then what it fixed, then what
/// changed without labels to judge it.
fn change_rank(row: &Row) -> Option<u8> {
    Some(match row.vs.as_ref()?.change? {
        Change::Broken => 0,
        Change::Fixed => 1,
        Change::Flipped => 2,
        Change::BothWrong => 3,
        Change::Same => 4,
        Change::BothRight => 5,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataset::row::Ranked;

    pub fn row(path: &str, truth: usize, predicted: usize, p: f32, loss: f32, energy: Option<f32>) -> Row {
        Row {
            path: path.into(),
            true_index: Some(truth),
            true_label: Some(format!("class {truth}")),
            top_k: vec![Ranked { index: predicted, label: format!("class {predicted}"), prob: p }],
            p_true: Some((-loss).exp()),
            loss: Some(loss),
            correct: Some(truth == predicted),
            energy_in_object: energy,
            ..Row::default()
        }
    }

    #[test]
    fn rows_of_two_models_sort_broken_first_and_filter_by_change() {
        use crate::dataset::Versus;
        let mut t = table();
        assert_eq!(t.columns(), &Column::ALL);
        let with = |path: &str, change: Change, r: f32| Row {
            vs: Some(Versus { change: Some(change), map_r: Some(r), ..Versus::default() }),
            ..row(path, 0, 0, 0.5, 0.5, None)
        };
        t.push(with("c/fixed.jpg", Change::Fixed, 0.9), None);
        t.push(with("c/broken.jpg", Change::Broken, 0.8), None);
        t.push(with("c/same.jpg", Change::BothRight, 0.1), None);
        assert_eq!(t.columns(), &Column::WITH_VS);
        t.sort_by(Column::Change);
        let names: Vec<&str> = t.window(0, 3).map(|e| e.row.path.as_str()).collect();
        assert_eq!(names, ["c/broken.jpg", "c/fixed.jpg", "c/same.jpg"]);
        t.sort_by(Column::MapR);
        assert_eq!(t.selected().unwrap().row.path, "c/same.jpg", "lowest map correlation first");
        t.set_filter(Filter { change: Some(Change::Fixed), ..Filter::default() });
        t.refresh();
        assert_eq!(t.shown(), 1);
        assert_eq!(t.selected().unwrap().row.path, "c/fixed.jpg");
    }

    fn table() -> Table {
        let mut t = Table::default();
        t.push(row("a/1.jpg", 0, 0, 0.9, 0.1, Some(0.8)), None);
        t.push(row("a/2.jpg", 0, 1, 0.6, 2.0, Some(0.2)), None);
        t.push(row("b/3.jpg", 1, 1, 0.5, 0.7, None), None);
        t.push(row("b/4.jpg", 1, 0, 0.7, 1.5, Some(0.5)), None);
        t.push(Row { path: "b/bad.jpg".into(), error: Some("corrupt".into()), ..Row::default() }, None);
        t.refresh();
        t
    }

    fn names(t: &Table) -> Vec<&str> {
        t.window(0, usize::MAX).map(|e| e.row.path.as_str()).collect()
    }

    #[test]
    fn sorting_puts_the_suspicious_first_and_the_same_key_reverses() {
        let mut t = table();
        t.sort_by(Column::Loss);
        t.refresh();
        assert_eq!(names(&t), ["a/2.jpg", "b/4.jpg", "b/3.jpg", "a/1.jpg", "b/bad.jpg"]);
        t.sort_by(Column::Loss);
        t.refresh();
        assert_eq!(names(&t), ["a/1.jpg", "b/3.jpg", "b/4.jpg", "a/2.jpg", "b/bad.jpg"]);
        t.sort_by(Column::Energy);
        t.refresh();
        assert_eq!(names(&t), ["a/2.jpg", "b/4.jpg", "a/1.jpg", "b/3.jpg", "b/bad.jpg"]);
        t.sort_by(Column::Confidence);
        t.refresh();
        assert_eq!(names(&t)[0], "b/3.jpg");
    }

    #[test]
    fn filters_and_the_cursor_stays_on_its_row() {
        let mut t = table();
        t.move_cursor(3);
        assert_eq!(t.selected().unwrap().row.path, "b/4.jpg");
        t.set_filter(Filter { wrong_only: true, ..Filter::default() });
        t.refresh();
        assert_eq!(names(&t), ["a/2.jpg", "b/4.jpg"]);
        assert_eq!(t.selected().unwrap().row.path, "b/4.jpg");
        t.set_filter(Filter { true_class: Some(1), predicted: Some(0), ..Filter::default() });
        t.refresh();
        assert_eq!(names(&t), ["b/4.jpg"]);
        t.set_filter(Filter { query: "b3".into(), ..Filter::default() });
        t.refresh();
        assert_eq!(names(&t), ["b/3.jpg"]);
        t.set_filter(Filter::default());
        t.refresh();
        assert_eq!(t.shown(), 5);
        assert_eq!(t.selected().unwrap().row.path, "b/3.jpg");
    }

    #[test]
    fn rows_arriving_keep_the_cursor_and_replace_by_path() {
        let mut t = table();
        t.sort_by(Column::Loss);
        assert_eq!(t.selected().unwrap().row.path, "a/2.jpg");
        t.move_cursor(1);
        assert_eq!(t.selected().unwrap().row.path, "b/4.jpg");
        t.push(row("c/5.jpg", 2, 0, 0.99, 9.0, None), None);
        t.push(row("b/bad.jpg", 1, 1, 0.9, 0.1, None), None);
        t.refresh();
        assert_eq!(t.len(), 6);
        assert_eq!(t.selected().unwrap().row.path, "b/4.jpg");
        assert_eq!(names(&t)[0], "c/5.jpg");
        let tally = t.tally();
        assert_eq!((tally.done, tally.errors, tally.labelled, tally.correct), (6, 0, 6, 3));
    }

    #[test]
    fn confusions_count_pairs_most_first() {
        let mut t = table();
        t.push(row("c/6.jpg", 1, 0, 0.6, 1.0, None), None);
        t.refresh();
        assert_eq!(t.confusions(), vec![((1, 0), 2), ((0, 1), 1)]);
    }

    #[test]
    fn stepping_stops_at_the_ends() {
        let mut t = table();
        assert!(t.step(-1).is_none());
        assert_eq!(t.step(1).unwrap().row.path, "a/2.jpg");
        t.go_bottom();
        assert!(t.step(1).is_none());
        assert_eq!(t.cursor(), 4);
    }

    #[test]
    fn thumbs_average_down_and_come_back() {
        let s = 112;
        let map: Vec<f32> = (0..s * s).map(|i| if (i % s) < s / 2 { 1.0 } else { 0.0 }).collect();
        let thumb = Thumb::of(&map, InputSize::square(s)).unwrap();
        assert_eq!(thumb.frame, InputSize::square(Thumb::SIZE));
        assert_eq!(thumb.values[0], 255);
        assert_eq!(thumb.values[Thumb::SIZE - 1], 0);
        let back = thumb.upsample(InputSize::square(s));
        assert_eq!(back, map);
        assert!(Thumb::of(&[0.0; 3], InputSize::square(2)).is_none());
    }

    #[test]
    fn a_wide_thumb_keeps_its_aspect_ratio() {
        // 56 high × 112 wide, the top half lit: 28×56 cells of 2×2 pixels.
        let (h, w) = (56, 112);
        let map: Vec<f32> = (0..h * w).map(|i| if i / w < h / 2 { 1.0 } else { 0.0 }).collect();
        let frame = InputSize::new(h, w);
        let thumb = Thumb::of(&map, frame).unwrap();
        assert_eq!(thumb.frame, InputSize::new(28, 56));
        assert_eq!(thumb.upsample(frame), map);
        assert!(Thumb::of(&map, InputSize::square(112)).is_none());
    }
}
