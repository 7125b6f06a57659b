//! Snapshot tests of whole screens with ratatui's `TestBackend` and the half-block protocol, on
//! the real model and sample image. Snapshots are the text of the screen (`tests/snapshots/`);
//! `UPDATE_SNAPSHOTS=1 cargo test --release` rewrites them after an intended change.

use std::path::PathBuf;
use std::sync::Arc;

use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;
use ratatui::Terminal;
use ratatui_image::picker::Picker;

use super::app::Compare;
use super::app::{Action, App};
use super::ui::{self, ImageCache};
use super::worker::{Event, Job, MapKey, Side};
use super::{prepare, TuiOptions};
use crate::cam::Method;
use crate::metrics::Scores;
use crate::preprocess::InputSize;

fn options() -> TuiOptions {
    TuiOptions::default()
}

/// The built-in model, as `camscope` without `-m` loads it.
fn builtin() -> crate::Result<crate::contract::Model> {
    crate::load::load(crate::load::DEFAULT_MODEL, None)
}

/// The app on the sample, with the maps it wants computed synchronously (fixed timings, so the
/// status line is deterministic).
struct Fixture {
    app: App,
    engine: crate::engine::Engine,
    second: Option<crate::engine::Engine>,
}

impl Fixture {
    fn new() -> Self {
        Self::with(&options())
    }

    fn with(opts: &TuiOptions) -> Self {
        let (app, engine, second, _keys) = prepare(opts, builtin).unwrap();
        Self { app, engine, second }
    }

    fn fill(&mut self) {
        // Perturbation methods take seconds per map: their parity is tested elsewhere, and here
        // their tiles show that they are waiting.
        // Scores take seconds per method; the grid test gives them by hand.
        let quick = self.app.missing().into_iter().filter_map(|job| match job {
            Job::Map(k) if k.method.kind() != crate::cam::Kind::Perturbation => Some(k),
            _ => None,
        });
        for key in quick {
            let engine = match key.side {
                Side::A => &self.engine,
                Side::B => self.second.as_ref().expect("a second model"),
            };
            let map = engine.cam(key.method, key.stage, key.class, &crate::cam::Control::default()).unwrap();
            self.app.on_event(Event::Map { key, map: Arc::new(map), ms: 12.0 });
        }
        self.app.progress = None;
    }

    fn act(&mut self, action: Action) {
        self.app.update(action);
        self.fill();
    }

    fn render(&self, w: u16, h: u16) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        let mut images = ImageCache::new(Picker::halfblocks());
        terminal.draw(|f| ui::draw(f, &self.app, &mut images)).unwrap();
        terminal.backend().buffer().clone()
    }
}

fn text(buffer: &Buffer) -> String {
    let w = buffer.area.width as usize;
    buffer
        .content()
        .chunks(w)
        .map(|row| row.iter().map(|c| c.symbol()).collect::<String>().trim_end().to_string() + "\n")
        .collect()
}

fn check_snapshot(name: &str, buffer: &Buffer) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.txt"));
    let actual = text(buffer);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() || !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        if std::env::var_os("CI").is_some() {
            panic!("snapshot {name} was missing in CI; it has been written, commit it");
        }
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(actual, expected, "snapshot {name} differs; run with UPDATE_SNAPSHOTS=1 if intended");
}

/// Cells drawn with true colours: the pictures (and the colour scale).
fn coloured_cells(buffer: &Buffer) -> usize {
    buffer
        .content()
        .iter()
        .filter(|c| matches!(c.fg, Color::Rgb(..)) && matches!(c.bg, Color::Rgb(..)))
        .count()
}

#[test]
fn main_screen() {
    let mut f = Fixture::new();
    f.fill();
    let buffer = f.render(100, 32);
    let screen = text(&buffer);
    assert!(screen.contains("bull mastiff"));
    assert!(screen.contains("_conv_head"));
    assert!(screen.contains("gradcam"));
    assert!(coloured_cells(&buffer) > 500, "the map is drawn");
    assert!(screen.contains("American Staffo… "), "a long label ends in an ellipsis");
    check_snapshot("main", &buffer);
    // A wide terminal gives the labels the room they need.
    assert!(text(&f.render(160, 40)).contains("American Staffordshire terrier "));
}

#[test]
fn help_popup_lists_every_key() {
    let mut f = Fixture::new();
    f.fill();
    f.app.update(Action::Help);
    let buffer = f.render(100, 32);
    let screen = text(&buffer);
    for needle in
        ["quit", "previous stage", "next method", "grid: every stage", "save the current view", "1-9"]
    {
        assert!(screen.contains(needle), "help lacks '{needle}'");
    }
    check_snapshot("help", &buffer);
}

#[test]
fn stage_grid_shows_many_stages() {
    let mut f = Fixture::new();
    f.act(Action::StageGrid);
    assert_eq!(f.app.maps.len(), 18);
    let buffer = f.render(120, 40);
    let screen = text(&buffer);
    for stage in ["_conv_stem", "_blocks.0", "_blocks.3"] {
        assert!(screen.contains(stage), "grid lacks {stage}");
    }
    check_snapshot("stage_grid", &buffer);
}

#[test]
fn method_grid_shows_every_method() {
    let mut f = Fixture::new();
    f.act(Action::MethodGrid);
    assert!(f.app.missing().iter().any(|j| matches!(j, Job::Scores(_))), "the grid asks for scores");
    for (method, road) in [(Method::GradCam, 0.12), (Method::HiResCam, 0.2071), (Method::LayerCam, -0.0468)] {
        let scores = Scores {
            confidence_change: 0.1,
            road_combined: road,
            deletion_auc: 0.001234,
            insertion_auc: 0.4567,
        };
        f.app.on_event(Event::Scores { key: MapKey { method, ..f.app.key() }, scores });
    }
    assert_eq!(f.app.most_faithful(), Some(Method::HiResCam));
    // Every score whole at 3 significant figures, in the narrowest tiles (160 columns: 6 per row)
    // and at 100 columns.
    for (width, height) in [(160, 50), (100, 40)] {
        let screen = text(&f.render(width, height));
        for m in ["gradcam", "hirescam", "gradcam++", "layercam"] {
            assert!(screen.contains(m), "{width}: grid lacks {m}");
        }
        assert!(screen.contains("★ hirescam"), "{width}: the most faithful is marked");
        for score in ["ROAD +0.207", "ROAD -0.0468", "del 0.00123 ins 0.457", "scoring…"] {
            assert!(screen.contains(score), "{width}: '{score}' missing:\n{screen}");
        }
    }
    check_snapshot("method_grid", &f.render(100, 40));
}

#[test]
fn stepping_back_from_the_head_reaches_block_15() {
    let mut f = Fixture::new();
    f.act(Action::PrevStage);
    assert_eq!(f.app.info.stages[f.app.stage], "_blocks.15");
    let screen = text(&f.render(100, 32));
    assert!(screen.contains("gradcam · _blocks.15"));
}

#[test]
fn long_maps_show_a_gauge() {
    let mut f = Fixture::new();
    f.fill();
    f.app.on_event(Event::Progress { done: 0, total: 1 });
    f.app.on_event(Event::Partial { done: 320, total: 1280 });
    let screen = text(&f.render(100, 32));
    assert!(screen.contains("320/1280 forward passes · Esc cancels"), "{screen}");
    assert!(screen.contains("computing 1/1"));
}

#[test]
fn starts_at_the_class_method_and_stage_asked_for() {
    use crate::explain::StageChoice;
    let opts = TuiOptions {
        method: Method::LayerCam,
        stages: StageChoice::Named("_blocks.10".into()),
        class: Some("TABBY".into()),
        smoothing: crate::cam::Smoothing { aug: false, eigen: true },
        colormap: Some(crate::render::Colormap::Viridis),
        ..options()
    };
    let (app, _, _, _) = prepare(&opts, builtin).unwrap();
    assert_eq!((app.class, app.method), (281, Method::LayerCam));
    assert_eq!(app.info.stages[app.stage], "_blocks.10");
    assert!(app.smoothing.eigen && !app.smoothing.aug);
    assert_eq!(app.colormap(), crate::render::Colormap::Viridis);
    let (app, _, _, _) = prepare(&TuiOptions { stages: StageChoice::All, ..options() }, builtin).unwrap();
    assert_eq!(app.screen, super::app::Screen::StageGrid);
}

#[test]
fn a_bad_stage_or_class_fails_like_explain() {
    use crate::explain::{explain, ExplainOptions, StageChoice};
    let tui_error = |opts: TuiOptions| prepare(&opts, builtin).err().expect("an error").to_string();
    let explain_error = |opts: ExplainOptions| explain(&opts).err().expect("an error").to_string();
    let stage = StageChoice::Named("_blocks.99".into());
    assert_eq!(
        tui_error(TuiOptions { stages: stage.clone(), ..options() }),
        explain_error(ExplainOptions { stages: stage, ..Default::default() })
    );
    for class in ["1000", "cat"] {
        let e = tui_error(TuiOptions { class: Some(class.into()), ..options() });
        assert_eq!(e, explain_error(ExplainOptions { class: Some(class.into()), ..Default::default() }));
        assert!(e.contains(&format!("unknown class '{class}'")), "{e}");
    }
}

#[test]
fn the_light_theme_paints_its_own_background() {
    let mut f = Fixture::new();
    f.fill();
    f.app.theme = f.app.themes.iter().position(|t| t.name == "light").unwrap();
    f.app.update(Action::Help);
    let buffer = f.render(100, 32);
    let background = f.app.theme().background.expect("the light theme has a background");
    // Everything but the pictures (and the selected rows) sits on it: text, borders, the popup.
    let painted = buffer.content().iter().filter(|c| c.bg == background).count();
    assert!(painted > 100 * 32 / 2, "only {painted} cells on the theme's background");
    let help_line = buffer.area.width as usize * 5 + 30;
    assert_eq!(buffer.content()[help_line].bg, background, "the help popup too");
}

#[test]
fn a_tiny_terminal_gets_a_message() {
    let f = Fixture::new();
    let screen = text(&f.render(30, 8));
    assert!(screen.contains("too small"));
}

#[test]
fn cached_views_need_no_new_computation() {
    let mut f = Fixture::new();
    f.fill();
    let first = f.app.key();
    f.app.update(Action::NextMethod);
    assert!(!f.app.missing().is_empty());
    f.app.update(Action::PrevMethod);
    assert!(f.app.missing().is_empty(), "back to a cached view");
    assert_eq!(f.app.key(), first);
    let _ = MapKey { ..first };
}

#[test]
fn terminal_graphics_show_half_blocks_until_encoded() {
    let mut f = Fixture::new();
    f.fill();
    let mut picker = Picker::halfblocks();
    picker.set_protocol_type(ratatui_image::picker::ProtocolType::Sixel);
    let mut images = ImageCache::new(picker);
    let mut terminal = Terminal::new(TestBackend::new(100, 32)).unwrap();
    let mut draw = |images: &mut ImageCache| {
        terminal.draw(|frame| ui::draw(frame, &f.app, images)).unwrap();
        terminal.backend().buffer().clone()
    };
    let is_sixel = |buffer: &Buffer| buffer.content().iter().any(|c| c.symbol().contains("\x1bP"));
    // At once: the map in half-blocks, the sixel picture on its way.
    let first = draw(&mut images);
    assert!(coloured_cells(&first) > 500 && !is_sixel(&first), "half-blocks first");
    assert!(images.is_encoding());
    let start = std::time::Instant::now();
    while images.is_encoding() {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the sixel picture never came");
        std::thread::sleep(std::time::Duration::from_millis(10));
        draw(&mut images);
    }
    assert!(is_sixel(&draw(&mut images)), "then the terminal's own picture");
}

mod data_set {
    use super::*;
    use crate::tui::browser::Browser;
    use crate::tui::table::tests::row;
    use crate::tui::table::Column;

    fn browser() -> Browser {
        let labels = Arc::new(vec!["tabby".to_string(), "tiger cat".into(), "espresso".into()]);
        let themes = crate::tui::theme::load_all().unwrap();
        let mut b = Browser::new(
            "val · class folders · 6 images".into(),
            "gradcam at layer4 · test".into(),
            labels,
            themes,
            0,
        );
        let named = |mut r: crate::dataset::Row, names: [&str; 2]| {
            r.true_label = Some(names[0].into());
            r.top_k[0].label = names[1].into();
            r
        };
        b.table.push(named(row("tabby/1.jpg", 0, 0, 0.91, 0.09, Some(0.82)), ["tabby", "tabby"]), None);
        b.table.push(named(row("tabby/2.jpg", 0, 1, 0.55, 1.9, Some(0.21)), ["tabby", "tiger cat"]), None);
        b.table.push(named(row("tabby/3.jpg", 0, 1, 0.48, 1.2, None), ["tabby", "tiger cat"]), None);
        b.table
            .push(named(row("espresso/4.jpg", 2, 2, 0.97, 0.03, Some(0.64)), ["espresso", "espresso"]), None);
        b.table.push(named(row("espresso/5.jpg", 2, 0, 0.40, 3.1, Some(0.05)), ["espresso", "tabby"]), None);
        b.table.push(
            crate::dataset::Row {
                path: "espresso/broken.jpg".into(),
                true_index: Some(2),
                true_label: Some("espresso".into()),
                error: Some("cannot read the header".into()),
                ..crate::dataset::Row::default()
            },
            None,
        );
        b.sweep = crate::tui::browser::SweepState::Running(crate::dataset::Progress {
            done: 6,
            total: 10,
            elapsed_s: 2.0,
            ..Default::default()
        });
        b.table.refresh();
        b
    }

    fn render(b: &Browser, w: u16, h: u16) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        let mut images = ImageCache::new(Picker::halfblocks());
        terminal.draw(|f| ui::draw_browser(f, b, &mut images)).unwrap();
        terminal.backend().buffer().clone()
    }

    #[test]
    fn the_table_as_it_fills() {
        check_snapshot("table", &render(&browser(), 130, 16));
    }

    #[test]
    fn sorted_by_loss_worst_first() {
        let mut b = browser();
        b.update(Action::SortBy(Column::Loss));
        b.table.refresh();
        let buffer = render(&b, 130, 16);
        check_snapshot("table_by_loss", &buffer);
        assert!(text(&buffer).lines().nth(2).unwrap().contains("espresso/5.jpg"));
    }

    #[test]
    fn misclassified_then_one_confused_pair() {
        let mut b = browser();
        b.update(Action::WrongOnly);
        b.table.refresh();
        check_snapshot("table_wrong", &render(&b, 90, 16));
        b.update(Action::Confusions);
        check_snapshot("table_confusions", &render(&b, 90, 16));
        b.update(Action::Open);
        b.table.refresh();
        let screen = text(&render(&b, 130, 16));
        assert!(screen.contains("2 of 6 rows (true tabby, predicted tiger cat)"), "{screen}");
    }

    #[test]
    fn thousands_of_rows_draw_only_a_page() {
        let mut b = browser();
        for i in 0..20_000 {
            b.table.push(
                row(&format!("many/{i:05}.jpg"), 0, (i % 3) as usize, 0.5, (i % 97) as f32 / 10.0, None),
                None,
            );
        }
        b.table.refresh();
        b.update(Action::Bottom);
        let screen = text(&render(&b, 100, 16));
        assert!(screen.contains("many/19999.jpg"), "{screen}");
        assert_eq!(b.page.get(), 11);
    }
}

/// Lite0 with its last block's projection scaled: the same stages, the same classes, other maps
/// from that block on (a stand-in for a fine-tune).
fn perturbed_lite0(dir: &std::path::Path) -> String {
    let weights = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet_lite0.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let mut scaled = 0;
    for (name, t) in tensors.iter_mut() {
        if name.starts_with("_blocks.15.") && name.ends_with("weight") {
            let dims = t.dims().to_vec();
            let noise = crate::test_support::seeded_tensor(&dims, 3).affine(0.5, 1.0).unwrap();
            *t = (&*t * noise).unwrap();
            scaled += 1;
        }
    }
    assert!(scaled > 0);
    let path = dir.join("lite0-perturbed.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path.display().to_string()
}

#[test]
fn two_models_side_by_side_and_their_difference() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TuiOptions { vs: Some(perturbed_lite0(dir.path())), ..options() };
    let mut f = Fixture::with(&opts);
    assert_eq!(f.app.compare, Compare::SideBySide, "--vs opens on both models");
    f.fill();
    assert!(f.app.pair_maps().is_some(), "both maps were asked for");
    let buffer = f.render(120, 34);
    let screen = text(&buffer);
    assert!(screen.contains("B − A ±") && screen.contains(" · r "), "{screen}");
    assert!(screen.contains("lite0-perturbed"), "{screen}");
    check_snapshot("compare_side_by_side", &buffer);

    f.act(Action::CycleCompare);
    assert_eq!(f.app.compare, Compare::Difference);
    check_snapshot("compare_difference", &f.render(120, 34));

    // Stage keys move both models; A's first stage is B's first stage (same architecture).
    f.act(Action::PrevStage);
    assert_eq!(f.app.b_key().unwrap().stage, f.app.stage);
    f.act(Action::CycleCompare);
    assert_eq!(f.app.compare, Compare::Single);
    assert_eq!(f.app.wanted(), vec![f.app.key()], "A alone asks for A's map only");
    check_snapshot("compare_single", &f.render(120, 34));
}

#[test]
fn v_without_a_second_model_says_how_to_get_one() {
    let mut f = Fixture::new();
    f.act(Action::CycleCompare);
    assert_eq!(f.app.compare, Compare::Single);
    assert!(f.app.status.as_ref().unwrap().0.contains("--vs MODEL"));
}

/// A segmentation model: the classes present by their share of the pixels, each with its
/// colour, the map beside the predicted segmentation, and choosing a class makes its region
/// the target.
#[test]
fn a_segmentation_model_shows_its_classes_and_segmentation() {
    let (app, engine, second, _keys) =
        prepare(&options(), || Ok(crate::test_support::toy_segmenter(224))).unwrap();
    let mut f = Fixture { app, engine, second };
    assert!(f.app.info.segmentation.is_some());
    let shares: f32 = f.app.predictions.iter().map(|p| p.prob).sum();
    assert!((shares - 1.0).abs() < 1e-5, "the shares of the classes present add up: {shares}");
    assert_ne!(f.app.label(f.app.class), "background", "the background is passed over");
    f.fill();
    let buffer = f.render(110, 32);
    let screen = text(&buffer);
    assert!(screen.contains("Classes · share of pixels"), "{screen}");
    assert!(screen.contains("■ "), "the legend's swatches");
    assert!(coloured_cells(&buffer) > 800, "the map and the segmentation are drawn");
    check_snapshot("segmentation", &buffer);
    // Another class present: its region, its map.
    let other = f.app.predictions.iter().map(|p| p.index).find(|&c| c != f.app.class).unwrap();
    f.app.set_class(other);
    f.fill();
    assert!(f.app.picture(&f.app.key()).is_some());
}

/// Columns and rows of the first picture drawn in true colour between columns `from` and `to`:
/// the run of coloured cells right of its first coloured column, and down it (the colour
/// scale beside the picture is a separate run).
fn picture_extent(buffer: &Buffer, from: u16, to: u16) -> (u16, u16) {
    let coloured = |x: u16, y: u16| {
        let c = &buffer[(x, y)];
        matches!(c.fg, Color::Rgb(..)) && matches!(c.bg, Color::Rgb(..))
    };
    let height = buffer.area.height;
    let Some((x0, y0)) = (from..to).find_map(|x| (0..height).find(|&y| coloured(x, y)).map(|y| (x, y)))
    else {
        return (0, 0);
    };
    let columns = (x0..to).take_while(|&x| coloured(x, y0)).count();
    let rows = (y0..height).take_while(|&y| coloured(x0, y)).count();
    (columns as u16, rows as u16)
}

/// A model whose input is wide (120 high × 224 wide) is drawn wide: the picture keeps the
/// frame's aspect ratio (half-block cells are one pixel wide and two high), beside a
/// segmentation of the same shape.
#[test]
fn a_wide_input_is_drawn_undistorted() {
    let (app, engine, second, _keys) =
        prepare(&options(), || Ok(crate::test_support::toy_segmenter(InputSize::new(120, 224)))).unwrap();
    let mut f = Fixture { app, engine, second };
    assert_eq!(f.app.info.view.dimensions(), (224, 120));
    f.fill();
    let map = f.app.picture(&f.app.key()).unwrap();
    assert_eq!(map.dimensions(), (224, 120));
    let buffer = f.render(150, 40);
    // The map: right of the 2/5 sidebar, left of the segmentation (the pane's right 45%).
    let pane = 150 * 2 / 5;
    let split = pane + (150 - pane) * 55 / 100;
    let (columns, rows) = picture_extent(&buffer, pane, split);
    let aspect = columns as f32 / (2 * rows) as f32;
    assert!(
        (aspect - 224.0 / 120.0).abs() < 0.25,
        "the map is drawn {columns}×{rows} cells: aspect {aspect}"
    );
    check_snapshot("wide_input", &buffer);
}
