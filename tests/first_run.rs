//! A newcomer's first commands (issue #11): what `explain` says it wrote, output formats, the
//! debugger's options and errors, and the errors that point at the mistake.

mod common;

use std::path::Path;

use common::{camscope, stderr};

/// The one-line error of a failed run.
fn error(args: &[&str]) -> String {
    let o = camscope(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("camscope: error: "), "{args:?}: {err}");
    err
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn explain_writes_the_format_the_extension_names_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    for (name, format) in [
        ("cat.jpg", image::ImageFormat::Jpeg),
        ("cat.jpeg", image::ImageFormat::Jpeg),
        ("cat.png", image::ImageFormat::Png),
        ("cat.bmp", image::ImageFormat::Bmp),
    ] {
        let path = dir.path().join(name);
        let o = camscope(&["explain", "-c", "281", "-o", p(&path)]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(image::guess_format(&bytes).unwrap(), format, "{name}");
        let err = stderr(&o);
        assert!(err.contains(&format!("wrote {}", p(&path))) && err.contains("tabby"), "{name}: {err}");
    }
}

#[test]
fn an_unknown_extension_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("map.foo");
    // The image does not exist either: the extension is checked first, in milliseconds.
    let e = error(&["explain", "/no/such/photo.png", "-o", p(&out)]);
    assert!(e.contains("map.foo") && e.contains(".foo") && e.contains("png") && e.contains("jpg"), "{e}");
    assert!(!out.exists());
    let e = error(&["explain", "-o", p(&dir.path().join("noextension"))]);
    assert!(e.contains("noextension") && e.contains("png"), "{e}");
}

#[test]
fn an_unknown_class_label_suggests_labels_that_contain_it() {
    let e = error(&["explain", "-c", "cat"]);
    assert!(e.contains("unknown class 'cat'"), "{e}");
    // Whole words first: the cats before the oystercatcher.
    let suggestions = e.split("did you mean:").nth(1).unwrap_or_else(|| panic!("no suggestions: {e}"));
    assert!(suggestions.trim_start().starts_with("tiger cat, Persian cat"), "{e}");
    let e = error(&["explain", "-c", "unicorn"]);
    assert!(e.contains("unicorn") && !e.contains("did you mean"), "{e}");
    // Labels are matched whole, in any case.
    let o = camscope(&["explain", "-c", "Tiger CAT", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["class"], 282);
}

#[test]
fn help_says_how_class_labels_match() {
    let o = camscope(&["explain", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("whole class label in any case"), "{help}");
    assert!(help.contains("EigenCAM's sign is free"), "{help}");
}

#[test]
fn device_errors_name_the_valid_forms() {
    let e = error(&["explain", "--device", "gpu"]);
    assert!(e.contains("'gpu'") && e.contains("cpu, cuda, cuda:N"), "{e}");
}

#[test]
fn the_debugger_takes_explains_options_and_refuses_bad_values_like_explain() {
    // Before the terminal is taken over: these runs have no terminal, and end in one line.
    for bad in [
        &["-M", "magiccam"][..],
        &["-l", "_blocks.99"],
        &["-c", "cat"],
        &["-c", "1000"],
        &["--colormap", "plaid"],
        &["--device", "gpu"],
    ] {
        let tui = error(bad);
        let explain = error(&[&["explain"], bad].concat());
        assert_eq!(tui, explain, "{bad:?}");
    }
}

#[test]
fn the_debuggers_own_errors_have_their_own_labels() {
    let e = error(&["--protocol", "ascii"]);
    assert!(e.contains("unknown protocol 'ascii'") && !e.contains("model:"), "{e}");
    let e = error(&["--theme", "neon"]);
    assert!(e.contains("unknown theme 'neon'") && e.contains("light") && !e.contains("model:"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "quit = [\"q\"]\nnext_stage = [\"n]\n").unwrap();
    let e = error(&["--keys", p(&keys)]);
    assert!(e.contains(&format!("keys {}: line 2, column ", p(&keys))), "{e}");
    assert!(!e.contains("model:"), "{e}");
}
