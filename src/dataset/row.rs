//! One image's line of a sweep, and its two spellings: CSV (one column per value, for a
//! spreadsheet or pandas) and JSON lines (top-k as a list). Both read back, for `--resume`,
//! `merge` and the debugger.

use serde::{Deserialize, Serialize};

use crate::metrics::Scores;

/// One of the top-k predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub index: usize,
    pub label: String,
    pub prob: f32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Row {
    /// Relative to the data set's root, `/`-separated: the row's identity.
    pub path: String,
    pub true_index: Option<usize>,
    pub true_label: Option<String>,
    /// Best first; empty in an error row.
    pub top_k: Vec<Ranked>,
    /// Softmax probability of the true class.
    pub p_true: Option<f32>,
    /// Cross-entropy, `−ln p_true`.
    pub loss: Option<f32>,
    pub correct: Option<bool>,
    /// The class the map explains.
    pub target_index: Option<usize>,
    pub target_label: Option<String>,
    /// Share of the map's sum inside the object's boxes / mask.
    pub energy_in_object: Option<f32>,
    /// Whether the map's maximum lies in the object (within the tolerance).
    pub pointing_hit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Scores>,
    /// What the second model of `--vs` made of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs: Option<Versus>,
    /// Which model, method and stage made the row: rows of another run are refused on resume.
    pub model: String,
    pub method: String,
    pub stage: String,
    /// Something to know about an otherwise good row (an object cropped away by the centre crop).
    pub note: Option<String>,
    /// Why this image has no results.
    pub error: Option<String>,
}

/// How a prediction moved from model A to model B (`--vs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A was wrong, B is right.
    Fixed,
    /// A was right, B is wrong.
    Broken,
    BothRight,
    BothWrong,
    /// No true class: the same top prediction.
    Same,
    /// No true class: another top prediction.
    Flipped,
}

impl Change {
    pub const ALL: [Change; 6] =
        [Change::Fixed, Change::Broken, Change::BothRight, Change::BothWrong, Change::Same, Change::Flipped];

    pub fn of(a_correct: Option<bool>, b_correct: Option<bool>, same_top: bool) -> Change {
        match (a_correct, b_correct) {
            (Some(false), Some(true)) => Change::Fixed,
            (Some(true), Some(false)) => Change::Broken,
            (Some(true), Some(true)) => Change::BothRight,
            (Some(false), Some(false)) => Change::BothWrong,
            _ if same_top => Change::Same,
            _ => Change::Flipped,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Change::Fixed => "fixed",
            Change::Broken => "broken",
            Change::BothRight => "both_right",
            Change::BothWrong => "both_wrong",
            Change::Same => "same",
            Change::Flipped => "flipped",
        }
    }

    fn parse(s: &str) -> Option<Change> {
        Change::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// Model B's side of a `--vs` row: its prediction, and how its map at the compared stage relates
/// to A's (on A's frame).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Versus {
    pub model: String,
    pub stage: String,
    pub predicted: Option<Ranked>,
    pub p_true: Option<f32>,
    pub loss: Option<f32>,
    pub correct: Option<bool>,
    pub change: Option<Change>,
    /// Pearson's r of the two maps; none where one is constant.
    pub map_r: Option<f32>,
    /// B's energy inside the object minus A's.
    pub energy_change: Option<f32>,
}

/// Which columns a CSV spelling has: `k` predictions, the faithfulness scores or not, model B's
/// columns or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    pub k: usize,
    pub metrics: bool,
    pub vs: bool,
}

/// Model B's columns, after A's and before the run's identity.
pub const VS_COLUMNS: [&str; 11] = [
    "vs_model",
    "vs_stage",
    "vs_top1_index",
    "vs_top1_label",
    "vs_top1_p",
    "vs_p_true",
    "vs_loss",
    "vs_correct",
    "change",
    "map_r",
    "energy_change",
];

impl Row {
    pub fn predicted(&self) -> Option<&Ranked> {
        self.top_k.first()
    }

    /// The columns of the CSV spelling.
    pub fn csv_header(columns: Columns) -> Vec<String> {
        let Columns { k, metrics, vs } = columns;
        let mut h: Vec<String> = ["path", "true_index", "true_label"].map(String::from).to_vec();
        for i in 1..=k {
            h.extend([format!("top{i}_index"), format!("top{i}_label"), format!("top{i}_p")]);
        }
        h.extend(
            ["p_true", "loss", "correct", "target_index", "target_label", "energy_in_object", "pointing_hit"]
                .map(String::from),
        );
        if metrics {
            h.extend(METRIC_COLUMNS.map(String::from));
        }
        if vs {
            h.extend(VS_COLUMNS.map(String::from));
        }
        h.extend(["model", "method", "stage", "note", "error"].map(String::from));
        h
    }

    pub fn csv_record(&self, columns: Columns) -> Vec<String> {
        let Columns { k, metrics, vs } = columns;
        fn opt<T: ToString>(v: &Option<T>) -> String {
            v.as_ref().map_or(String::new(), T::to_string)
        }
        let mut r = vec![self.path.clone(), opt(&self.true_index), opt(&self.true_label)];
        for i in 0..k {
            match self.top_k.get(i) {
                Some(p) => r.extend([p.index.to_string(), p.label.clone(), p.prob.to_string()]),
                None => r.extend([String::new(), String::new(), String::new()]),
            }
        }
        r.extend([
            opt(&self.p_true),
            opt(&self.loss),
            opt(&self.correct),
            opt(&self.target_index),
            opt(&self.target_label),
            opt(&self.energy_in_object),
            opt(&self.pointing_hit),
        ]);
        if metrics {
            let m = self.metrics.as_ref();
            let f = |v: Option<f32>| v.map_or(String::new(), |v| v.to_string());
            r.extend([
                f(m.map(|m| m.confidence_change)),
                f(m.map(|m| m.road_combined)),
                f(m.map(|m| m.deletion_auc)),
                f(m.map(|m| m.insertion_auc)),
            ]);
        }
        if vs {
            let v = self.vs.as_ref();
            let p = v.and_then(|v| v.predicted.as_ref());
            let f = |v: Option<f32>| v.map_or(String::new(), |v| v.to_string());
            r.extend([
                v.map_or(String::new(), |v| v.model.clone()),
                v.map_or(String::new(), |v| v.stage.clone()),
                p.map_or(String::new(), |p| p.index.to_string()),
                p.map_or(String::new(), |p| p.label.clone()),
                f(p.map(|p| p.prob)),
                f(v.and_then(|v| v.p_true)),
                f(v.and_then(|v| v.loss)),
                v.and_then(|v| v.correct).map_or(String::new(), |c| c.to_string()),
                v.and_then(|v| v.change).map_or(String::new(), |c| c.name().to_string()),
                f(v.and_then(|v| v.map_r)),
                f(v.and_then(|v| v.energy_change)),
            ]);
        }
        r.extend([
            self.model.clone(),
            self.method.clone(),
            self.stage.clone(),
            opt(&self.note),
            opt(&self.error),
        ]);
        r
    }

    /// A CSV record back into a row, by the header's names.
    pub fn from_csv(header: &csv::StringRecord, record: &csv::StringRecord) -> Result<Row, String> {
        let get =
            |name: &str| header.iter().position(|h| h == name).and_then(|i| record.get(i)).unwrap_or("");
        fn parse<T: std::str::FromStr>(name: &str, text: &str) -> Result<Option<T>, String> {
            if text.is_empty() {
                return Ok(None);
            }
            text.parse().map(Some).map_err(|_| format!("column {name}: '{text}' is not a valid value"))
        }
        let text = |name: &str| Some(get(name).to_string()).filter(|s| !s.is_empty());
        let mut top_k = Vec::new();
        for i in 1.. {
            let index = format!("top{i}_index");
            if !header.iter().any(|h| h == index) {
                break;
            }
            let Some(idx) = parse::<usize>(&index, get(&index))? else { break };
            let prob = parse::<f32>("p", get(&format!("top{i}_p")))?.unwrap_or(f32::NAN);
            top_k.push(Ranked { index: idx, label: get(&format!("top{i}_label")).to_string(), prob });
        }
        let metrics = if header.iter().any(|h| h == METRIC_COLUMNS[0]) && !get(METRIC_COLUMNS[0]).is_empty() {
            let m = |n: &str| parse::<f32>(n, get(n)).map(|v| v.unwrap_or(f32::NAN));
            Some(Scores {
                confidence_change: m(METRIC_COLUMNS[0])?,
                road_combined: m(METRIC_COLUMNS[1])?,
                deletion_auc: m(METRIC_COLUMNS[2])?,
                insertion_auc: m(METRIC_COLUMNS[3])?,
            })
        } else {
            None
        };
        let vs = if header.iter().any(|h| h == "vs_model") && !get("vs_model").is_empty() {
            let predicted = match parse::<usize>("vs_top1_index", get("vs_top1_index"))? {
                Some(index) => Some(Ranked {
                    index,
                    label: get("vs_top1_label").to_string(),
                    prob: parse::<f32>("vs_top1_p", get("vs_top1_p"))?.unwrap_or(f32::NAN),
                }),
                None => None,
            };
            let change = match get("change") {
                "" => None,
                c => Some(
                    Change::parse(c).ok_or_else(|| format!("column change: '{c}' is not a valid value"))?,
                ),
            };
            Some(Versus {
                model: get("vs_model").to_string(),
                stage: get("vs_stage").to_string(),
                predicted,
                p_true: parse("vs_p_true", get("vs_p_true"))?,
                loss: parse("vs_loss", get("vs_loss"))?,
                correct: parse("vs_correct", get("vs_correct"))?,
                change,
                map_r: parse("map_r", get("map_r"))?,
                energy_change: parse("energy_change", get("energy_change"))?,
            })
        } else {
            None
        };
        let path = get("path").to_string();
        if path.is_empty() {
            return Err("a row without a path".into());
        }
        Ok(Row {
            path,
            true_index: parse("true_index", get("true_index"))?,
            true_label: text("true_label"),
            top_k,
            p_true: parse("p_true", get("p_true"))?,
            loss: parse("loss", get("loss"))?,
            correct: parse("correct", get("correct"))?,
            target_index: parse("target_index", get("target_index"))?,
            target_label: text("target_label"),
            energy_in_object: parse("energy_in_object", get("energy_in_object"))?,
            pointing_hit: parse("pointing_hit", get("pointing_hit"))?,
            metrics,
            vs,
            model: get("model").to_string(),
            method: get("method").to_string(),
            stage: get("stage").to_string(),
            note: text("note"),
            error: text("error"),
        })
    }
}

/// The faithfulness scores of `--metrics`, as `evaluate` names them.
pub const METRIC_COLUMNS: [&str; 4] = ["confidence_change", "road_combined", "deletion_auc", "insertion_auc"];

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(k: usize, metrics: bool, vs: bool) -> Columns {
        Columns { k, metrics, vs }
    }

    #[test]
    fn a_vs_row_survives_csv_and_json() {
        let mut row = sample();
        row.vs = Some(Versus {
            model: "finetuned".into(),
            stage: "_blocks.15".into(),
            predicted: Some(Ranked { index: 281, label: "tabby".into(), prob: 0.7 }),
            p_true: Some(0.7),
            loss: Some(0.356_675),
            correct: Some(true),
            change: Some(Change::Fixed),
            map_r: Some(0.25),
            energy_change: Some(-0.5),
        });
        let header = csv::StringRecord::from(Row::csv_header(cols(2, false, true)));
        let record = csv::StringRecord::from(row.csv_record(cols(2, false, true)));
        assert_eq!(Row::from_csv(&header, &record).unwrap(), row);
        let json = serde_json::to_string(&row).unwrap();
        assert!(json.contains(r#""change":"fixed""#), "{json}");
        assert_eq!(serde_json::from_str::<Row>(&json).unwrap(), row);
    }

    #[test]
    fn changes_follow_both_verdicts() {
        assert_eq!(Change::of(Some(false), Some(true), false), Change::Fixed);
        assert_eq!(Change::of(Some(true), Some(false), false), Change::Broken);
        assert_eq!(Change::of(Some(true), Some(true), true), Change::BothRight);
        assert_eq!(Change::of(Some(false), Some(false), false), Change::BothWrong);
        assert_eq!(Change::of(None, None, true), Change::Same);
        assert_eq!(Change::of(None, None, false), Change::Flipped);
    }

    pub(crate) fn sample() -> Row {
        Row {
            path: "cat/a.jpg".into(),
            true_index: Some(281),
            true_label: Some("tabby".into()),
            top_k: vec![
                Ranked { index: 282, label: "tiger cat".into(), prob: 0.61 },
                Ranked { index: 281, label: "tabby".into(), prob: 0.2 },
            ],
            p_true: Some(0.2),
            loss: Some(1.609_438),
            correct: Some(false),
            target_index: Some(281),
            target_label: Some("tabby".into()),
            energy_in_object: Some(0.75),
            pointing_hit: Some(true),
            metrics: None,
            vs: None,
            model: "efficientnet-lite0".into(),
            method: "gradcam".into(),
            stage: "_blocks.15".into(),
            note: None,
            error: None,
        }
    }

    #[test]
    fn a_row_survives_csv_and_json() {
        let row = sample();
        let header = csv::StringRecord::from(Row::csv_header(cols(2, false, false)));
        let record = csv::StringRecord::from(row.csv_record(cols(2, false, false)));
        assert_eq!(Row::from_csv(&header, &record).unwrap(), row);
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(serde_json::from_str::<Row>(&json).unwrap(), row);

        let mut with_metrics = row.clone();
        with_metrics.metrics = Some(Scores {
            confidence_change: -0.5,
            road_combined: 0.1,
            deletion_auc: 0.2,
            insertion_auc: 0.3,
        });
        let header = csv::StringRecord::from(Row::csv_header(cols(2, true, false)));
        let record = csv::StringRecord::from(with_metrics.csv_record(cols(2, true, false)));
        assert_eq!(Row::from_csv(&header, &record).unwrap(), with_metrics);
    }

    #[test]
    fn an_error_row_has_no_predictions() {
        let row = Row { path: "bad.jpg".into(), error: Some("cannot decode".into()), ..Row::default() };
        let header = csv::StringRecord::from(Row::csv_header(cols(3, false, false)));
        let record = csv::StringRecord::from(row.csv_record(cols(3, false, false)));
        let back = Row::from_csv(&header, &record).unwrap();
        assert_eq!(back, row);
        assert!(back.predicted().is_none());
    }
}
