//! What a sweep runs over: a folder of images, an ImageFolder tree (first-level folders are the
//! true classes), or a CSV of paths, labels and boxes; with boxes from Pascal VOC XML files and
//! masks from a folder of PNGs. Nothing is skipped silently: every file left out is listed with
//! its reason, and a file that looks like an image but is not becomes that image's error row
//! later, not a stop now.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::region::PixelBox;
use crate::contract::class_named;
use crate::error::{Error, Result};

/// File extensions taken for images (any case). Anything else is listed as skipped.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "jpe", "webp", "bmp", "gif", "tif", "tiff"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Images anywhere below a folder, without labels.
    Folder,
    /// torchvision's `ImageFolder`: every first-level folder is a class.
    ImageFolder,
    /// A CSV file: `path,label[,x0,y0,x1,y1]`.
    Csv,
}

/// One image of the data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: PathBuf,
    /// The path relative to the data set's root, `/`-separated: the row's identity, what shards
    /// hash and what merge and resume match on.
    pub name: String,
    pub label: Option<usize>,
    /// In the original image's pixels; several boxes are one object region (their union).
    pub boxes: Vec<PixelBox>,
    pub mask: Option<PathBuf>,
    /// What is wrong with the image's annotations, found while listing: its row is an error row.
    pub problem: Option<String>,
}

/// A file or folder left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

pub struct DataSet {
    pub root: PathBuf,
    pub layout: Layout,
    /// In sorted order of `name` (a CSV keeps its own order).
    pub items: Vec<Item>,
    pub skipped: Vec<Skipped>,
}

/// Where the annotations are, besides a CSV's box columns.
#[derive(Debug, Clone, Default)]
pub struct Annotations {
    /// A folder of Pascal VOC XML files named like the images (`a/b.jpg` → `a/b.xml` or
    /// `b.xml`). Without it, an XML file next to an image is its annotation.
    pub boxes: Option<PathBuf>,
    /// A folder of mask PNGs named like the images (`a/b.jpg` → `a/b.png` or `b.png`).
    pub masks: Option<PathBuf>,
    /// Treat a folder of folders as plain images, not as classes.
    pub unlabelled: bool,
}

impl Layout {
    /// How the summary lines name it.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Folder => "a folder, no labels",
            Layout::ImageFolder => "class folders",
            Layout::Csv => "a CSV list",
        }
    }
}

impl DataSet {
    /// Lists `input`: a CSV file, or a folder (an ImageFolder tree when it holds folders and no
    /// images at its top level).
    pub fn open(input: &Path, labels: &[String], ann: &Annotations) -> Result<DataSet> {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        let mut set = if meta.is_file() {
            if !has_extension(input, "csv") {
                return Err(data_err(input, "is a file, not a folder or a .csv list of images"));
            }
            read_csv(input, labels)?
        } else {
            walk(input, labels, ann.unlabelled)?
        };
        attach_annotations(&mut set, ann)?;
        if set.items.is_empty() {
            let why = match set.skipped.len() {
                0 => "holds no images".to_string(),
                n => format!("holds no images ({n} files and folders skipped: {})", summary_of(&set.skipped)),
            };
            return Err(data_err(input, &why));
        }
        Ok(set)
    }

    /// "12 skipped: 9 not an image (.txt, .xml), 3 hidden" — what the summary line says.
    pub fn skipped_summary(&self) -> Option<String> {
        (!self.skipped.is_empty())
            .then(|| format!("{} skipped: {}", self.skipped.len(), summary_of(&self.skipped)))
    }
}

fn data_err(path: &Path, message: &str) -> Error {
    Error::DataSet { path: path.into(), message: message.into() }
}

/// Reasons counted, most frequent first.
fn summary_of(skipped: &[Skipped]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for s in skipped {
        match counts.iter_mut().find(|(r, _)| *r == s.reason) {
            Some((_, n)) => *n += 1,
            None => counts.push((s.reason.clone(), 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts.iter().map(|(r, n)| format!("{n} {r}")).collect::<Vec<_>>().join(", ")
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

fn relative_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// Every image below `dir` by name; hidden entries (not descended into) and other files are
/// listed as skipped. XML files are annotations, matched to their images later.
fn images_below(root: &Path, dir: &Path, skipped: &mut Vec<Skipped>) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut walker = walkdir::WalkDir::new(dir).follow_links(true).into_iter();
    while let Some(entry) = walker.next() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().map(|p| relative_name(root, p)).unwrap_or_default();
                let why = e.io_error().map_or_else(|| "a link loop".to_string(), |e| e.to_string());
                skipped.push(Skipped { path, reason: format!("unreadable ({why})") });
                continue;
            }
        };
        let is_dir = entry.file_type().is_dir();
        if entry.depth() > 0 && is_hidden(entry.file_name()) {
            let what = if is_dir { "hidden folder" } else { "hidden file" };
            skipped.push(Skipped { path: relative_name(root, entry.path()), reason: what.into() });
            if is_dir {
                walker.skip_current_dir();
            }
            continue;
        }
        if is_dir {
            continue;
        }
        let path = entry.path();
        let name = relative_name(root, path);
        if is_image(path) {
            found.push((path.to_path_buf(), name));
        } else if !has_extension(path, "xml") {
            let ext = path.extension().map_or("no extension".into(), |e| format!(".{}", e.to_string_lossy()));
            skipped.push(Skipped { path: name, reason: format!("not an image ({ext})") });
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn item(path: PathBuf, name: String, label: Option<usize>) -> Item {
    Item { path, name, label, boxes: Vec::new(), mask: None, problem: None }
}

/// A folder: an ImageFolder tree when its top level holds folders and no images (and the
/// caller did not ask for unlabelled), else every image below it.
fn walk(root: &Path, labels: &[String], unlabelled: bool) -> Result<DataSet> {
    let mut folders = Vec::new();
    // Left out of an ImageFolder tree: hidden entries and files beside the class folders.
    let mut outside_classes = Vec::new();
    let mut top_images = false;
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let path = entry.path();
        let name = relative_name(root, &path);
        if is_hidden(&entry.file_name()) {
            let what = if path.is_dir() { "hidden folder (not a class)" } else { "hidden file" };
            outside_classes.push(Skipped { path: name, reason: what.into() });
        } else if path.is_dir() {
            folders.push(path);
        } else {
            top_images |= is_image(&path);
            outside_classes.push(Skipped { path: name, reason: "not in a class folder".into() });
        }
    }
    let mut skipped = Vec::new();
    if unlabelled || top_images || folders.is_empty() {
        let items = images_below(root, root, &mut skipped)
            .into_iter()
            .map(|(path, name)| item(path, name, None))
            .collect();
        return Ok(DataSet { root: root.into(), layout: Layout::Folder, items, skipped });
    }
    folders.sort();
    let names: Vec<String> =
        folders.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    let classes = match_folders(&names, labels).map_err(|m| data_err(root, &m))?;
    skipped = outside_classes;
    let mut items = Vec::new();
    for (folder, class) in folders.iter().zip(classes) {
        for (path, name) in images_below(root, folder, &mut skipped) {
            items.push(item(path, name, Some(class)));
        }
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(DataSet { root: root.into(), layout: Layout::ImageFolder, items, skipped })
}

/// The class of a label written in a folder name or a CSV: the contract's rule (an index, or a
/// whole label in any case), or the label with `_` for its spaces, as folder names write it.
fn class_of(name: &str, labels: &[String]) -> Option<usize> {
    class_named(labels, name).or_else(|| class_named(labels, &name.replace('_', " ")))
}

/// Up to five labels nearest to `name`: those containing it first, then by edit distance.
pub fn nearest_labels(name: &str, labels: &[String]) -> Vec<String> {
    let spaced = name.replace('_', " ");
    let mut near: Vec<usize> = crate::contract::labels_matching(labels, &spaced);
    if near.len() < 5 {
        let wanted = spaced.to_lowercase();
        let mut by_distance: Vec<(f64, usize)> = (0..labels.len())
            .filter(|i| !near.contains(i))
            .map(|i| (-strsim::normalized_damerau_levenshtein(&wanted, &labels[i].to_lowercase()), i))
            .collect();
        by_distance.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        near.extend(by_distance.into_iter().take(5 - near.len()).map(|(_, i)| i));
    }
    near.into_iter().take(5).map(|i| labels[i].clone()).collect()
}

/// The class of every class folder, as torchvision's `ImageFolder` would and then some: by whole
/// label (any case, `_` for space) or index; where no folder matches that way and there are as
/// many folders as classes (ImageNet's `n01440764` …), the sorted position, which is what
/// `ImageFolder` itself assigns. Otherwise one error naming every folder that matches nothing.
fn match_folders(names: &[String], labels: &[String]) -> std::result::Result<Vec<usize>, String> {
    let matched: Vec<Option<usize>> = names.iter().map(|n| class_of(n, labels)).collect();
    if matched.iter().all(Option::is_some) {
        return Ok(matched.into_iter().flatten().collect());
    }
    if matched.iter().all(Option::is_none) && names.len() == labels.len() {
        return Ok((0..names.len()).collect());
    }
    let unmatched: Vec<String> = names
        .iter()
        .zip(&matched)
        .filter(|(_, m)| m.is_none())
        .map(|(n, _)| format!("'{n}' (nearest: {})", nearest_labels(n, labels).join(", ")))
        .collect();
    Err(format!(
        "{} of {} class folders match no class of the model (by whole label in any case, or by index): {}; \
         rename them, or sweep with --unlabelled to ignore the folder names",
        unmatched.len(),
        names.len(),
        unmatched.join("; ")
    ))
}

/// `path,label[,x0,y0,x1,y1]` with a header; paths relative to the CSV's folder; several rows of
/// one path add boxes to it.
fn read_csv(csv_path: &Path, labels: &[String]) -> Result<DataSet> {
    let err = |m: String| data_err(csv_path, &m);
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_path(csv_path)
        .map_err(|e| err(e.to_string()))?;
    let headers = reader.headers().map_err(|e| err(e.to_string()))?.clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let path_col = column("path").ok_or_else(|| {
        err(format!(
            "has no `path` column (its header is `{}`); expected `path,label` and optionally `x0,y0,x1,y1`",
            headers.iter().collect::<Vec<_>>().join(",")
        ))
    })?;
    let label_col = column("label");
    let box_cols: Vec<Option<usize>> = ["x0", "y0", "x1", "y1"].iter().map(|c| column(c)).collect();
    let box_cols: Option<[usize; 4]> = match box_cols.iter().filter(|c| c.is_some()).count() {
        0 => None,
        4 => Some([box_cols[0].unwrap(), box_cols[1].unwrap(), box_cols[2].unwrap(), box_cols[3].unwrap()]),
        _ => {
            let missing: Vec<&str> = ["x0", "y0", "x1", "y1"]
                .iter()
                .zip(&box_cols)
                .filter(|(_, c)| c.is_none())
                .map(|(n, _)| *n)
                .collect();
            return Err(err(format!(
                "has some box columns but not {}: a box needs x0,y0,x1,y1",
                missing.join(", ")
            )));
        }
    };
    let base = csv_path.parent().unwrap_or(Path::new("."));
    let mut items: Vec<Item> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut bad_labels: Vec<String> = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 2;
        let record = record.map_err(|e| err(format!("line {line}: {e}")))?;
        let name = record.get(path_col).unwrap_or("").to_string();
        if name.is_empty() {
            return Err(err(format!("line {line}: the path is empty")));
        }
        let label_text = label_col.and_then(|c| record.get(c)).unwrap_or("");
        let label = if label_text.is_empty() {
            None
        } else {
            match class_of(label_text, labels) {
                Some(c) => Some(c),
                None => {
                    if bad_labels.len() < 5 {
                        bad_labels.push(format!(
                            "line {line}: '{label_text}' (nearest: {})",
                            nearest_labels(label_text, labels).join(", ")
                        ));
                    }
                    continue;
                }
            }
        };
        let b = match box_cols {
            Some(cols) => {
                let values: Vec<&str> = cols.iter().map(|&c| record.get(c).unwrap_or("")).collect();
                if values.iter().all(|v| v.is_empty()) {
                    None
                } else {
                    let parsed: std::result::Result<Vec<f64>, _> =
                        values.iter().map(|v| v.parse::<f64>()).collect();
                    let v = parsed.map_err(|_| {
                        err(format!("line {line}: box `{}` is not four numbers", values.join(",")))
                    })?;
                    Some(PixelBox { x0: v[0], y0: v[1], x1: v[2], y1: v[3] })
                }
            }
            None => None,
        };
        let at = *index.entry(name.clone()).or_insert_with(|| {
            items.push(item(base.join(&name), name.clone(), label));
            items.len() - 1
        });
        let it = &mut items[at];
        if it.label != label {
            return Err(err(format!(
                "line {line}: {name} is labelled both {:?} and {:?}",
                it.label.map(|l| &labels[l]),
                label.map(|l| &labels[l])
            )));
        }
        it.boxes.extend(b);
    }
    if !bad_labels.is_empty() {
        return Err(err(format!("labels that name no class of the model: {}", bad_labels.join("; "))));
    }
    Ok(DataSet { root: base.into(), layout: Layout::Csv, items, skipped: Vec::new() })
}

/// The annotation file of `item` in `dir` (`a/b.jpg` → `dir/a/b.EXT`, else `dir/b.EXT`), or
/// next to the image when `dir` is `None`.
fn annotation_path(item: &Item, dir: Option<&Path>, ext: &str) -> Option<PathBuf> {
    let rel = Path::new(&item.name).with_extension(ext);
    let candidates: Vec<PathBuf> = match dir {
        Some(d) => vec![d.join(&rel), d.join(rel.file_name()?)],
        None => vec![item.path.with_extension(ext)],
    };
    candidates.into_iter().find(|p| p.is_file())
}

fn attach_annotations(set: &mut DataSet, ann: &Annotations) -> Result<()> {
    for dir in ann.boxes.iter().chain(&ann.masks) {
        if !dir.is_dir() {
            return Err(data_err(dir, "is not a folder"));
        }
    }
    for item in &mut set.items {
        if let Some(xml) = annotation_path(item, ann.boxes.as_deref(), "xml") {
            match std::fs::read_to_string(&xml).map_err(|e| e.to_string()).and_then(|t| parse_voc(&t)) {
                Ok(boxes) => item.boxes.extend(boxes),
                Err(e) => item.problem = Some(format!("annotation {}: {e}", xml.display())),
            }
        }
        if let Some(dir) = &ann.masks {
            item.mask = annotation_path(item, Some(dir), "png");
        }
    }
    Ok(())
}

fn child<'a, 'input>(n: roxmltree::Node<'a, 'input>, name: &str) -> Option<roxmltree::Node<'a, 'input>> {
    n.children().find(|c| c.has_tag_name(name))
}

/// Every `<object><bndbox>` of a Pascal VOC annotation (ImageNet's boxes ship the same way).
pub fn parse_voc(xml: &str) -> std::result::Result<Vec<PixelBox>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not valid XML ({e})"))?;
    let mut boxes = Vec::new();
    for object in doc.descendants().filter(|n| n.has_tag_name("object")) {
        let Some(bndbox) = child(object, "bndbox") else { continue };
        let mut v = [0f64; 4];
        for (slot, name) in v.iter_mut().zip(["xmin", "ymin", "xmax", "ymax"]) {
            let text = child(bndbox, name).and_then(|n| n.text()).map(str::trim);
            *slot = text
                .and_then(|t| t.parse::<f64>().ok())
                .ok_or_else(|| format!("an object's bndbox has no numeric <{name}>"))?;
        }
        boxes.push(PixelBox::from_voc(v[0], v[1], v[2], v[3]));
    }
    Ok(boxes)
}
