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
    /// Which model, method and stage made the row: rows of another run are refused on resume.
    pub model: String,
    pub method: String,
    pub stage: String,
    /// Something to know about an otherwise good row (an object cropped away by the centre crop).
    pub note: Option<String>,
    /// Why this image has no results.
    pub error: Option<String>,
}

impl Row {
    pub fn predicted(&self) -> Option<&Ranked> {
        self.top_k.first()
    }

    /// The columns of the CSV spelling, with `k` predictions, and `metrics` columns or not.
    pub fn csv_header(k: usize, metrics: bool) -> Vec<String> {
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
        h.extend(["model", "method", "stage", "note", "error"].map(String::from));
        h
    }

    pub fn csv_record(&self, k: usize, metrics: bool) -> Vec<String> {
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
        let header = csv::StringRecord::from(Row::csv_header(2, false));
        let record = csv::StringRecord::from(row.csv_record(2, false));
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
        let header = csv::StringRecord::from(Row::csv_header(2, true));
        let record = csv::StringRecord::from(with_metrics.csv_record(2, true));
        assert_eq!(Row::from_csv(&header, &record).unwrap(), with_metrics);
    }

    #[test]
    fn an_error_row_has_no_predictions() {
        let row = Row { path: "bad.jpg".into(), error: Some("cannot decode".into()), ..Row::default() };
        let header = csv::StringRecord::from(Row::csv_header(3, false));
        let record = csv::StringRecord::from(row.csv_record(3, false));
        let back = Row::from_csv(&header, &record).unwrap();
        assert_eq!(back, row);
        assert!(back.predicted().is_none());
    }
}
