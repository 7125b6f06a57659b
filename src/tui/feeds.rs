//! The threads behind the data set's screen, so that its UI never waits: the sweep (rows as they
//! are finished, written to the results file if there is one), the preview of the selected row
//! (decoding its image, and its map where the row came from a file without one), and opening an
//! image in the image view (decode and forward pass).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use image::RgbImage;

use super::table::Thumb;
use crate::cam::Control;
use crate::contract::Model;
use crate::dataset::results::Writer;
use crate::dataset::{sweep, Item, Progress, Row, SweepOptions, Sweeper};
use crate::preprocess;

pub enum FeedEvent {
    Row { row: Box<Row>, thumb: Option<Arc<Thumb>> },
    Progress(Progress),
    Finished(Progress),
    Failed(String),
}

/// The sweep on its own thread (of model A, and of B beside it with `--vs`). While `hold` is set (the image view is computing a map), it
/// waits between images: what the person looks at goes first.
pub struct SweepFeed {
    pub events: Receiver<FeedEvent>,
    pub hold: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl SweepFeed {
    pub fn spawn(
        model: Arc<Model>,
        versus: Option<Arc<Model>>,
        opts: SweepOptions,
        items: Vec<Item>,
        mut writer: Option<Writer>,
    ) -> Self {
        let (tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(AtomicBool::new(false));
        let (their_stop, their_hold) = (stop.clone(), hold.clone());
        // An image's map lies on the model's input frame (an `.npy` of another size gets no thumb).
        let frame = model.preprocess.input_size;
        let handle = std::thread::Builder::new()
            .name("camscope-sweep".into())
            .spawn(move || {
                let sweeper = Sweeper::new(&model, opts).and_then(|s| match &versus {
                    Some(b) => s.versus(b),
                    None => Ok(s),
                });
                let outcome = sweeper.and_then(|sweeper| {
                    sweep::run(&sweeper, &items, &their_stop, &mut |row, map, progress| {
                        if let Some(w) = writer.as_mut() {
                            w.write(&row)?;
                        }
                        let thumb = map.and_then(|m| Thumb::of(m, frame)).map(Arc::new);
                        let _ = tx.send(FeedEvent::Row { row: Box::new(row), thumb });
                        let _ = tx.send(FeedEvent::Progress(*progress));
                        while their_hold.load(Ordering::Relaxed) && !their_stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Ok(())
                    })
                });
                let _ = tx.send(match outcome {
                    Ok(p) => FeedEvent::Finished(p),
                    Err(e) => FeedEvent::Failed(e.to_string()),
                });
            })
            .expect("spawn the sweep thread");
        Self { events, hold, stop, handle: Some(handle) }
    }
}

impl Drop for SweepFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub struct PreviewRequest {
    /// The row's name (its identity in the table).
    pub name: String,
    pub item: Item,
    /// Compute the map too: the row came from a results file.
    pub with_map: bool,
}

pub struct PreviewReady {
    pub name: String,
    pub view: Result<Arc<RgbImage>, String>,
    pub thumb: Option<Arc<Thumb>>,
}

/// Decodes the selected row's image (and makes its map where the row has none). Only the newest
/// request counts: scrolling past rows never queues their pictures up.
pub struct PreviewLoader {
    requests: Option<Sender<PreviewRequest>>,
    pub ready: Receiver<PreviewReady>,
    handle: Option<JoinHandle<()>>,
}

impl PreviewLoader {
    pub fn spawn(model: Arc<Model>, opts: SweepOptions) -> Self {
        let (requests, theirs) = mpsc::channel::<PreviewRequest>();
        let (tx, ready) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("camscope-preview".into())
            .spawn(move || {
                let sweeper = Sweeper::new(&model, opts).ok();
                while let Ok(mut request) = theirs.recv() {
                    while let Ok(newer) = theirs.try_recv() {
                        request = newer;
                    }
                    let input = preprocess::load_input(Some(&request.item.path), &model.preprocess);
                    let view = input.as_ref().map(|i| Arc::new(i.view.clone())).map_err(|e| e.to_string());
                    let thumb = match (&sweeper, request.with_map, input) {
                        (Some(sweeper), true, Ok(input)) => {
                            let frame = input.frame();
                            let ctl = Control::default();
                            match sweeper.row_and_map(&request.item, Ok(input), &ctl) {
                                Ok((_, Some(map))) => Thumb::of(&map, frame).map(Arc::new),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    if tx.send(PreviewReady { name: request.name, view, thumb }).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the preview thread");
        Self { requests: Some(requests), ready, handle: Some(handle) }
    }

    pub fn request(&self, request: PreviewRequest) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(request);
        }
    }
}

impl Drop for PreviewLoader {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
