//! Class labels: the ImageNet names every 1000-class model gets without its own, label files, and
//! the one label matcher.

const IMAGENET_LABELS: &str = include_str!("../../models/imagenet_classes.txt");

/// The class a person names: an index (`243`) or a whole label in any case (`bull mastiff`).
/// The one rule; callers say what an unknown name is.
pub fn class_named(labels: &[String], name: &str) -> Option<usize> {
    let name = name.trim();
    if let Ok(i) = name.parse::<usize>() {
        return (i < labels.len()).then_some(i);
    }
    let wanted = name.to_lowercase();
    labels.iter().position(|l| l.to_lowercase() == wanted)
}

/// The classes whose label contains `query` (case-insensitive, trimmed), best first: the whole
/// label, then whole words (`cat` in `tiger cat`), then the start of a word, then anywhere; in
/// class order within each. The one label matcher: `--class` suggestions and the debugger's `/`.
pub fn labels_matching(labels: &[String], query: &str) -> Vec<usize> {
    let q = query.trim().to_lowercase();
    let word_edge = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    let rank = |label: &str| -> Option<u8> {
        let l = label.to_lowercase();
        if l == q {
            return Some(0);
        }
        l.match_indices(&q)
            .map(|(at, _)| {
                let starts = word_edge(l[..at].chars().next_back());
                let ends = word_edge(l[at + q.len()..].chars().next());
                match (starts, ends) {
                    (true, true) => 1,
                    (true, false) => 2,
                    _ => 3,
                }
            })
            .min()
    };
    let mut found: Vec<(u8, usize)> =
        labels.iter().enumerate().filter_map(|(i, l)| rank(l).map(|r| (r, i))).collect();
    found.sort();
    found.into_iter().map(|(_, i)| i).collect()
}

/// The ImageNet class names: the labels of any 1000-class model without its own.
pub fn imagenet_labels() -> Vec<String> {
    parse_labels(IMAGENET_LABELS)
}

/// A label file: one label a line, blank lines skipped.
pub fn parse_labels(text: &str) -> Vec<String> {
    text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

/// The labels of a model that comes without its own: ImageNet's for 1000 classes, else numbers.
pub fn default_labels(classes: usize) -> Vec<String> {
    if classes == 1000 {
        imagenet_labels()
    } else {
        (0..classes).map(|i| format!("class {i}")).collect()
    }
}

/// Pascal VOC's classes, in the order of torchvision's 21-output segmentation models.
pub const VOC_CLASSES: [&str; 21] = [
    "__background__",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];
