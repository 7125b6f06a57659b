//! End-to-end: the real binary in a real terminal (tmux), driven by keys, read back from the
//! screen. Skips itself where tmux is missing (`.ci/run` installs it).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

struct Session {
    name: String,
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Session {
    fn start(name: &str, width: u16, height: u16, extra: &str) -> Self {
        // `=name`: this session exactly (a bare name also matches sessions it is a prefix of,
        // which tests running beside each other would kill).
        let _ = Command::new("tmux").args(["kill-session", "-t", &format!("={name}")]).output();
        let bin = env!("CARGO_BIN_EXE_camscope");
        // The exit status is printed after the program ends, and the pane kept for reading it.
        let cmd = format!("{bin} --protocol halfblocks {extra}; echo CAMSCOPE-EXIT=$?; sleep 60");
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
                &cmd,
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("tmux starts");
        assert!(status.success());
        Self { name: name.into() }
    }

    fn screen(&self) -> String {
        tmux(&["capture-pane", "-t", &self.name, "-p"])
    }

    fn keys(&self, keys: &str) {
        tmux(&["send-keys", "-t", &self.name, keys]);
    }

    /// Waits (up to 30 s: CI machines are slow) until the screen shows `text`.
    fn wait_for(&self, text: &str) -> String {
        self.wait_for_all(&[text])
    }

    /// Waits until one capture of the screen shows every one of `texts`: a frame is written in
    /// pieces, so a capture can hold a popup's title before its lines.
    fn wait_for_all(&self, texts: &[&str]) -> String {
        self.wait_until(&format!("{texts:?}"), |screen| texts.iter().all(|t| screen.contains(t)))
    }

    /// Waits until a capture of the screen satisfies `ok`; `what` names it in the failure.
    fn wait_until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{what} never appeared; screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &format!("={}", self.name)]).output();
    }
}

fn have_tmux() -> bool {
    let ok = Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        common::skip("tmux not found (the end-to-end terminal test needs it)");
    }
    ok
}

#[test]
fn debugger_in_tmux() {
    if !have_tmux() {
        return;
    }
    let s = Session::start("camscope-e2e", 160, 50, "");
    s.wait_for_all(&["first map on screen", "bull mastiff", "gradcam · _conv_head"]);

    s.keys("[");
    s.wait_for("gradcam · _blocks.15");

    s.keys("m");
    s.wait_for("hirescam · _blocks.15");

    s.keys("?");
    s.wait_for_all(&["Keys (Esc closes)", "next method", "quit"]);
    s.keys("Escape");
    // The map's title shows under the popup too: wait for the popup itself to go, or the next
    // key can follow Escape closely enough to be read with it as Alt-g.
    s.wait_until("the help popup closed", |screen| {
        screen.contains("hirescam · _blocks.15") && !screen.contains("Keys (Esc closes)")
    });

    s.keys("g");
    let stages_shown = |screen: &str| {
        ["_conv_stem", "_blocks.0", "_blocks.3", "_blocks.7"].iter().filter(|n| screen.contains(*n)).count()
    };
    s.wait_until("the stage grid with at least 3 of its first stages", |screen| {
        screen.contains("every stage") && stages_shown(screen) >= 3
    });
    s.keys("g");

    s.keys("2");
    s.wait_for("boxer · ");

    s.keys("q");
    s.wait_for("CAMSCOPE-EXIT=0");
}

#[test]
fn tiny_terminal_does_not_crash() {
    if !have_tmux() {
        return;
    }
    let s = Session::start("camscope-tiny", 30, 8, "");
    s.wait_for("too small");
    s.keys("q");
    s.wait_for("CAMSCOPE-EXIT=0");
}

#[test]
fn bad_image_exits_before_taking_the_screen() {
    if !have_tmux() {
        return;
    }
    let s = Session::start("camscope-bad", 100, 20, "/no/such/photo.png");
    let screen = s.wait_for("CAMSCOPE-EXIT=1");
    assert!(screen.contains("camscope: error:") && screen.contains("/no/such/photo.png"));
}

/// The data set's table: the sweep fills it, L sorts by loss (worst first), Enter opens the
/// worst image, n steps to the next one in the table's order, Esc comes back to the table on
/// that row, q quits cleanly.
#[test]
fn data_set_table_in_tmux() {
    if !have_tmux() {
        return;
    }
    let s = Session::start("camscope-set", 160, 40, "tests/fixtures/dataset/folder");
    s.wait_for_all(&["class folders · 5 images", "swept 5 images", "accuracy 25.0% (1/4) · 1 errors"]);
    s.keys("L");
    let screen = s.wait_for("loss ▼");
    let rows: Vec<&str> = screen.lines().filter(|l| l.starts_with("│") && l.contains(".jpg ")).collect();
    assert!(rows[0].contains("espresso/hopper.jpg") && rows[0].contains("academic gown"), "{screen}");
    assert!(rows[1].contains("tabby/both.jpg"), "{screen}");
    s.keys("Enter");
    s.wait_for_all(&["Predictions", "espresso/hopper.jpg · 1/5 in the table", "class 967 espresso"]);
    s.keys("n");
    // Esc while the map is computed cancels it; once it is shown, Esc goes back.
    s.wait_for_all(&["tabby/both.jpg · 2/5 in the table", "class 281 tabby  map "]);
    s.keys("Escape");
    let screen = s.wait_for_all(&["loss ▼", "┌ tabby/both.jpg"]);
    assert!(!screen.contains("Predictions"), "{screen}");
    s.keys("w");
    s.wait_for("3 of 5 rows (wrong)");
    s.keys("q");
    s.wait_for("CAMSCOPE-EXIT=0");
}

/// `--vs`: both models side by side, `v` through the three views, stage keys move both.
#[test]
fn two_models_in_tmux() {
    if !have_tmux() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("r18.safetensors");
    common::write_random_resnet18(&b, 11);
    let s = Session::start("camscope-vs", 160, 44, &format!("--vs {}", b.display()));
    s.wait_for_all(&["_conv_head ~ layer4.1", "B − A ±", "| B r18 | B − A"]);
    s.keys("v");
    s.wait_for(", B r18: B − A");
    s.keys("v");
    s.wait_until("A's map alone", |screen| {
        screen.contains("gradcam · _conv_head ·") && !screen.contains("B − A")
    });
    s.keys("v");
    s.keys("[");
    // Another architecture: every stage of A is shown beside B's own default stage.
    s.wait_for("_blocks.15 ~ layer4.1");
    s.keys("q");
    s.wait_for("CAMSCOPE-EXIT=0");
}

/// `camscope DIR --vs B`: the sweep runs both models and the table shows what changed; Enter
/// opens an image with A, B and their difference; `x` filters by the change.
#[test]
fn data_set_of_two_models_in_tmux() {
    if !have_tmux() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("r18.safetensors");
    common::write_random_resnet18(&b, 11);
    let args = format!("tests/fixtures/dataset/folder --vs {}", b.display());
    let s = Session::start("camscope-pairs", 170, 44, &args);
    let screen = s.wait_for_all(&["swept 5 images", "A → B", "maps r", "vs r18 at layer4.1"]);
    assert!(
        screen.contains("broken") || screen.contains("both wrong") || screen.contains("fixed"),
        "{screen}"
    );
    // The first row (by name) is the broken file; the second opens.
    s.keys("j");
    s.keys("Enter");
    s.wait_for_all(&["B − A ±", "| B r18 | B − A", "espresso/coffee.jpg · 2/5 in the table"]);
    s.keys("n");
    s.wait_for_all(&["3/5 in the table", "B − A ±"]);
    s.keys("Escape");
    s.wait_for("A → B");
    s.keys("q");
    s.wait_for("CAMSCOPE-EXIT=0");
}
