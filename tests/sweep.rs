//! `camscope sweep` and `merge` on the tiny data set in tests/fixtures/dataset.

use std::path::Path;
use std::process::Command;

fn camscope(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_camscope")).args(args).output().unwrap()
}

fn fixture(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dataset").join(p).display().to_string()
}

#[test]
fn a_class_folder_sweeps_into_one_row_per_image_and_shards_merge_to_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n).display().to_string();
    let full = camscope(&["sweep", &fixture("folder"), "-o", &out("full.csv")]);
    let log = String::from_utf8_lossy(&full.stderr);
    assert!(full.status.success(), "{log}");
    assert!(log.contains("1 hidden folder (not a class)") && log.contains("1 not an image (.txt)"), "{log}");
    let rows = camscope::dataset::results::read(Path::new(&out("full.csv"))).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "espresso/broken.jpg",
            "espresso/coffee.jpg",
            "espresso/hopper.jpg",
            "tabby/both.jpg",
            "tabby/chelsea.jpg"
        ]
    );
    assert!(rows[0].error.as_deref().unwrap().contains("broken.jpg"));
    assert_eq!(rows[1].top_k[0].label, "espresso");
    // The VOC box next to chelsea.jpg covers the frame's cat: the map is on it.
    assert!(rows[4].energy_in_object.unwrap() > 0.5 && rows[4].pointing_hit == Some(true));
    // One target per image: each row explains its own true class.
    assert!(rows[1..].iter().all(|r| r.target_index == r.true_index));

    for k in ["1/2", "2/2"] {
        let part = out(&format!("part{}.jsonl", &k[..1]));
        let o = camscope(&["sweep", &fixture("folder"), "--shard", k, "-o", &part]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let merged = camscope(&["merge", &out("part1.jsonl"), &out("part2.jsonl"), "-o", &out("merged.csv")]);
    assert!(merged.status.success(), "{}", String::from_utf8_lossy(&merged.stderr));
    let merged = camscope::dataset::results::read(Path::new(&out("merged.csv"))).unwrap();
    assert_eq!(merged, rows);

    // Resume finds nothing left to do; a rerun without --resume refuses to overwrite.
    let again = camscope(&["sweep", &fixture("folder"), "-o", &out("full.csv"), "--resume"]);
    assert!(again.status.success());
    assert_eq!(camscope::dataset::results::read(Path::new(&out("full.csv"))).unwrap(), rows);
    let refused = camscope(&["sweep", &fixture("folder"), "-o", &out("full.csv")]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume continues it"));
}

#[test]
fn a_csv_with_boxes_and_a_bad_shard_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("csv.csv").display().to_string();
    let o = camscope(&["sweep", &fixture("list.csv"), "-o", &out]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = camscope::dataset::results::read(Path::new(&out)).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().take(2).all(|r| r.energy_in_object.is_some()));
    assert!(rows[2].energy_in_object.is_none(), "both.jpg has no box");
    let bad = camscope(&["sweep", &fixture("folder"), "--shard", "0/4", "-o", &out]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("count from 1"));
}

/// One target per image, and the batch changes nothing: every good row of a sweep is what
/// `explain` says of that image alone with the row's target (top-k and the map itself).
#[test]
fn every_sweep_row_equals_explain_on_its_image_alone() {
    let dir = tempfile::tempdir().unwrap();
    let at = |n: &str| dir.path().join(n).display().to_string();
    let o = camscope(&["sweep", &fixture("folder"), "-o", &at("rows.jsonl"), "--save-maps", &at("maps")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = camscope::dataset::results::read(Path::new(&at("rows.jsonl"))).unwrap();
    let read = |p: &str| {
        let t = candle_core::Tensor::read_npy(p).unwrap();
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let mut compared = 0;
    for row in rows.iter().filter(|r| r.error.is_none()) {
        let target = row.target_index.unwrap().to_string();
        let npy = at(&format!("{}.npy", row.path.replace('/', "_")));
        let image = fixture(&format!("folder/{}", row.path));
        let e = camscope(&["explain", &image, "-c", &target, "--json", "-k", "5", "--npy", &npy]);
        assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
        let json: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
        let top: Vec<(u64, f64)> = json["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["index"].as_u64().unwrap(), p["prob"].as_f64().unwrap()))
            .collect();
        assert_eq!(top.len(), row.top_k.len(), "{}", row.path);
        for ((index, prob), r) in top.iter().zip(&row.top_k) {
            assert_eq!(*index as usize, r.index, "{}", row.path);
            assert!((prob - r.prob as f64).abs() < 1e-6, "{}: {prob} vs {}", row.path, r.prob);
        }
        let alone = read(&npy);
        let swept = read(&at(&format!("maps/{}", row.path.replace(".jpg", ".npy"))));
        assert_eq!(alone.len(), swept.len());
        let worst = alone.iter().zip(&swept).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{}: maps differ by {worst}", row.path);
        compared += 1;
    }
    assert_eq!(compared, 4);
}
