//! Results files: written one flushed row at a time (a killed sweep keeps every finished row),
//! read back for `--resume`, `merge` and the debugger. CSV or JSON lines, by the extension.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::row::{Columns, Row};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    pub fn of(path: &Path) -> Result<Format> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("jsonl" | "ndjson") => Ok(Format::JsonLines),
            _ => Err(Error::Results {
                path: path.into(),
                message: "the extension names the format: .csv, or .jsonl for JSON lines".into(),
            }),
        }
    }
}

fn results_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Results { path: path.into(), message: message.into() }
}

/// Every row of a results file; a file cut short by a kill loses at most its last, partial line.
pub fn read(path: &Path) -> Result<Vec<Row>> {
    let format = Format::of(path)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    match format {
        Format::JsonLines => {
            let mut rows = Vec::new();
            let lines: Vec<String> = BufReader::new(file)
                .lines()
                .collect::<std::io::Result<_>>()
                .map_err(|e| Error::io(path, e))?;
            let last = lines.len();
            for (n, line) in lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Row>(line) {
                    Ok(row) => rows.push(row),
                    // The last line of a killed run may be half written: it is redone.
                    Err(_) if n + 1 == last => {}
                    Err(e) => {
                        return Err(results_err(path, format!("line {}: not a sweep row ({e})", n + 1)))
                    }
                }
            }
            Ok(rows)
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
            let header = reader.headers().map_err(|e| results_err(path, e.to_string()))?.clone();
            if !header.iter().any(|h| h == "path") || !header.iter().any(|h| h == "error") {
                return Err(results_err(path, "not a camscope sweep CSV (no `path` and `error` columns)"));
            }
            let records: Vec<csv::Result<csv::StringRecord>> = reader.records().collect();
            let last = records.len();
            let mut rows = Vec::new();
            for (n, record) in records.into_iter().enumerate() {
                let parsed = record.map_err(|e| e.to_string()).and_then(|r| {
                    if r.len() != header.len() {
                        return Err(format!("{} fields where the header has {}", r.len(), header.len()));
                    }
                    Row::from_csv(&header, &r)
                });
                match parsed {
                    Ok(row) => rows.push(row),
                    Err(_) if n + 1 == last => {}
                    Err(e) => return Err(results_err(path, format!("row {}: {e}", n + 2))),
                }
            }
            Ok(rows)
        }
    }
}

/// Appends rows to a results file, each flushed as it is written.
pub struct Writer {
    path: PathBuf,
    inner: Inner,
}

enum Inner {
    Csv { writer: Box<csv::Writer<File>>, columns: Columns },
    JsonLines(BufWriter<File>),
}

impl Writer {
    /// A new file (truncating), or, with `append`, the end of an existing one. A CSV that is
    /// appended to must have the columns these rows will have.
    pub fn open(path: &Path, columns: Columns, append: bool) -> Result<Writer> {
        let format = Format::of(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(results_err(path, format!("the folder {} does not exist", dir.display())));
            }
        }
        let exists = append && path.metadata().is_ok_and(|m| m.len() > 0);
        let header = Row::csv_header(columns);
        if exists && format == Format::Csv {
            let mut reader = csv::Reader::from_path(path).map_err(|e| results_err(path, e.to_string()))?;
            let have = reader.headers().map_err(|e| results_err(path, e.to_string()))?;
            if have.iter().ne(header.iter().map(String::as_str)) {
                return Err(results_err(
                    path,
                    "its columns differ from this run's (another --top-k, --metrics or --vs?): resume with the same options, or write a new file",
                ));
            }
        }
        let file = if exists {
            let mut f = OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
            drop_partial_last_line(path, &mut f)?;
            f
        } else {
            File::create(path).map_err(|e| Error::io(path, e))?
        };
        let inner = match format {
            Format::Csv => {
                let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(file);
                if !exists {
                    writer.write_record(&header).map_err(|e| results_err(path, e.to_string()))?;
                    writer.flush().map_err(|e| Error::io(path, e))?;
                }
                Inner::Csv { writer: Box::new(writer), columns }
            }
            Format::JsonLines => Inner::JsonLines(BufWriter::new(file)),
        };
        Ok(Writer { path: path.into(), inner })
    }

    pub fn write(&mut self, row: &Row) -> Result<()> {
        let path = &self.path;
        match &mut self.inner {
            Inner::Csv { writer, columns } => {
                writer
                    .write_record(row.csv_record(*columns))
                    .map_err(|e| results_err(path, e.to_string()))?;
                writer.flush().map_err(|e| Error::io(path, e))
            }
            Inner::JsonLines(w) => {
                let line = serde_json::to_string(row).map_err(|e| results_err(path, e.to_string()))?;
                writeln!(w, "{line}").and_then(|()| w.flush()).map_err(|e| Error::io(path, e))
            }
        }
    }
}

/// A file cut off mid-line by a kill loses that partial line, so the next row starts cleanly
/// (the image it belonged to is redone: reading skipped it too).
fn drop_partial_last_line(path: &Path, f: &mut File) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < bytes.len() {
        f.set_len(keep as u64).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Rows of several files as one: one row per path (a good row wins over an error row of the
/// same path, else the first seen), sorted by path as one sweep of the whole folder writes them.
/// Rows of different models, methods or stages are refused.
pub fn merge(parts: Vec<(PathBuf, Vec<Row>)>) -> Result<Vec<Row>> {
    let mut by_path: std::collections::BTreeMap<String, Row> = std::collections::BTreeMap::new();
    let mut first: Option<(PathBuf, String)> = None;
    for (file, rows) in parts {
        for row in rows {
            let identity = format!("model {}, method {}, stage {}", row.model, row.method, row.stage);
            match &first {
                None => first = Some((file.clone(), identity)),
                Some((f, id)) if *id != identity => {
                    return Err(results_err(
                        &file,
                        format!(
                            "has rows of {identity}, but {} has rows of {id}: merge one run's parts",
                            f.display()
                        ),
                    ))
                }
                _ => {}
            }
            match by_path.get(&row.path) {
                Some(kept) if kept.error.is_none() || row.error.is_some() => {}
                _ => {
                    by_path.insert(row.path.clone(), row);
                }
            }
        }
    }
    Ok(by_path.into_values().collect())
}

/// Rows of a results file that this run would not have written are refused, not mixed in.
pub fn check_same_run(path: &Path, rows: &[Row], sweeper: &super::Sweeper) -> Result<()> {
    check_same_model(path, rows, sweeper)?;
    check_same_vs(path, rows, sweeper)
}

/// Rows to be appended to must have the second model (`--vs`) this run has, or none if it has
/// none; a file only read (the debugger showing a sweep) need not.
fn check_same_vs(path: &Path, rows: &[Row], sweeper: &super::Sweeper) -> Result<()> {
    let vs = sweeper.vs_model_and_stage();
    let other_vs =
        |r: &Row| r.error.is_none() && r.vs.as_ref().map(|v| (v.model.as_str(), v.stage.as_str())) != vs;
    if let Some(r) = rows.iter().find(|r| other_vs(r)) {
        let spell =
            |v: Option<(&str, &str)>| v.map_or("no --vs".to_string(), |(m, s)| format!("--vs {m} at {s}"));
        return Err(results_err(
            path,
            format!(
                "holds rows with {}; this run has {}: use the same --vs, or write another file",
                spell(r.vs.as_ref().map(|v| (v.model.as_str(), v.stage.as_str()))),
                spell(vs)
            ),
        ));
    }
    Ok(())
}

/// Rows of another model, method or stage are refused: whether to show them or to add to them.
pub fn check_same_model(path: &Path, rows: &[Row], sweeper: &super::Sweeper) -> Result<()> {
    let (model, method, stage) = (&sweeper.model().name, sweeper.method_name(), sweeper.stage_name());
    match rows.iter().find(|r| r.model != *model || r.method != method || r.stage != stage) {
        Some(r) => Err(results_err(
            path,
            format!(
                "holds rows of model {}, {} at {}; this run is model {model}, {method} at {stage}: use the same options (-m, -M, -l), or write another file",
                r.model, r.method, r.stage
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::row::Ranked;

    fn row(path: &str, error: Option<&str>) -> Row {
        Row {
            path: path.into(),
            top_k: if error.is_none() {
                vec![Ranked { index: 1, label: "goldfish".into(), prob: 0.5 }]
            } else {
                vec![]
            },
            model: "m".into(),
            method: "gradcam".into(),
            stage: "s".into(),
            error: error.map(String::from),
            ..Row::default()
        }
    }

    #[test]
    fn rows_written_are_read_back_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["r.csv", "r.jsonl"] {
            let path = dir.path().join(name);
            let rows = [row("a.jpg", None), row("b,\"odd\".jpg", Some("cannot decode: bad\nheader"))];
            let mut w = Writer::open(&path, Columns { k: 1, metrics: false, vs: false }, false).unwrap();
            for r in &rows {
                w.write(r).unwrap();
            }
            drop(w);
            assert_eq!(read(&path).unwrap(), rows, "{name}");
            // Appending keeps what is there.
            let mut w = Writer::open(&path, Columns { k: 1, metrics: false, vs: false }, true).unwrap();
            w.write(&row("c.jpg", None)).unwrap();
            drop(w);
            assert_eq!(read(&path).unwrap().len(), 3, "{name}");
        }
    }

    /// A kill mid-row leaves half a line: reading drops it, appending starts a new line.
    #[test]
    fn a_half_written_last_line_is_dropped_and_redone() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["r.csv", "r.jsonl"] {
            let path = dir.path().join(name);
            let mut w = Writer::open(&path, Columns { k: 1, metrics: false, vs: false }, false).unwrap();
            w.write(&row("a.jpg", None)).unwrap();
            drop(w);
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(if name.ends_with("csv") { b"b.jpg,,,1" } else { b"{\"path\":\"b.j" }).unwrap();
            drop(f);
            assert_eq!(read(&path).unwrap(), [row("a.jpg", None)], "{name}");
            let mut w = Writer::open(&path, Columns { k: 1, metrics: false, vs: false }, true).unwrap();
            w.write(&row("b.jpg", None)).unwrap();
            drop(w);
            assert_eq!(read(&path).unwrap(), [row("a.jpg", None), row("b.jpg", None)], "{name}");
        }
    }

    #[test]
    fn a_csv_with_other_columns_is_not_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        Writer::open(&path, Columns { k: 5, metrics: false, vs: false }, false)
            .unwrap()
            .write(&row("a.jpg", None))
            .unwrap();
        let e =
            Writer::open(&path, Columns { k: 3, metrics: false, vs: false }, true).err().unwrap().to_string();
        assert!(e.contains("columns differ"), "{e}");
    }

    #[test]
    fn merge_keeps_one_row_per_path_preferring_results_to_errors() {
        let a = vec![row("b.jpg", Some("timeout")), row("a.jpg", None)];
        let b = vec![row("b.jpg", None), row("a.jpg", Some("late error")), row("c.jpg", None)];
        let merged = merge(vec![("a.csv".into(), a), ("b.csv".into(), b)]).unwrap();
        assert_eq!(merged, [row("a.jpg", None), row("b.jpg", None), row("c.jpg", None)]);
        let mut other = row("d.jpg", None);
        other.model = "resnet18".into();
        let e = merge(vec![("a.csv".into(), vec![row("a.jpg", None)]), ("b.csv".into(), vec![other])])
            .unwrap_err();
        assert!(e.to_string().contains("merge one run's parts"), "{e}");
    }
}
