//! The engine thread. The UI sends the full list of maps it is missing; the worker replaces its
//! queue with the newest list (so stale work is dropped, never queued up behind key presses),
//! computes one map at a time and sends each back as soon as it is ready. Esc raises the cancel
//! flag, which empties the queue at the next check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::cam::{Control, Method, Smoothing};
use crate::engine::Engine;
use crate::metrics::{self, Scores};
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapKey {
    pub class: usize,
    pub method: Method,
    /// A stage of the side's model.
    pub stage: usize,
    pub smoothing: Smoothing,
    pub side: Side,
}

/// Which model a map is of: the one opened, or the second of `--vs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Side {
    #[default]
    A,
    B,
}

/// A unit of work for the engine thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    Map(MapKey),
    /// Faithfulness scores of a map (computing the map first if needed).
    Scores(MapKey),
}

/// Deletion/insertion steps of the scores shown in the method grid: a quarter of RISE's, so that
/// a grid of methods is scored in seconds rather than minutes.
const GRID_METRIC_STEPS: usize = 56;

#[derive(Debug, Clone)]
pub enum Event {
    Map {
        key: MapKey,
        map: Arc<Vec<f32>>,
        ms: f64,
    },
    Progress {
        done: usize,
        total: usize,
    },
    /// Progress inside one long map (forward passes done of total).
    Partial {
        done: usize,
        total: usize,
    },
    Scores {
        key: MapKey,
        scores: Scores,
    },
    Failed {
        key: MapKey,
        message: String,
    },
}

pub struct Worker {
    requests: Option<Sender<Vec<Job>>>,
    pub events: Receiver<Event>,
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

/// What the UI thread can tell a map in progress without waiting for it.
#[derive(Default)]
struct Shared {
    /// Esc: drop everything.
    cancel: AtomicBool,
    /// Bumped by every request, so a long map stops as soon as the UI wants something else.
    generation: AtomicU64,
}

impl Worker {
    /// Takes ownership of the engines: the model's, and the second model's with `--vs`.
    /// `batch_size`: forward passes per batch of the perturbation methods.
    pub fn spawn(engine: Engine, second: Option<Engine>, batch_size: usize) -> Self {
        let (req_tx, req_rx) = mpsc::channel::<Vec<Job>>();
        let (ev_tx, ev_rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let handle = std::thread::Builder::new()
            .name("camscope-engine".into())
            .spawn(move || serve((&engine, second.as_ref()), batch_size, &req_rx, &ev_tx, &theirs))
            .expect("spawn the engine thread");
        Self { requests: Some(req_tx), events: ev_rx, shared, handle: Some(handle) }
    }

    pub fn request(&self, keys: Vec<Job>) {
        self.shared.cancel.store(false, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(tx) = &self.requests {
            // A closed channel means the worker has ended; nothing is left to ask.
            let _ = tx.send(keys);
        }
    }

    pub fn cancel(&self) {
        self.shared.cancel.store(true, Ordering::SeqCst);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel();
        self.requests.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(
    (first, second): (&Engine, Option<&Engine>),
    batch_size: usize,
    requests: &Receiver<Vec<Job>>,
    events: &Sender<Event>,
    shared: &Shared,
) {
    let mut queue: Vec<Job> = Vec::new();
    // The maps this thread made, for scoring them later without recomputing.
    let mut maps: HashMap<MapKey, Arc<Vec<f32>>> = HashMap::new();
    let (mut total, mut done) = (0, 0);
    loop {
        if queue.is_empty() {
            match requests.recv() {
                Ok(keys) => {
                    queue = keys;
                    (total, done) = (queue.len(), 0);
                }
                Err(_) => return,
            }
        }
        // Read the generation before draining: a request sent after this point cancels the map
        // we are about to start, so it is never kept waiting behind a long method.
        let generation = shared.generation.load(Ordering::SeqCst);
        loop {
            match requests.try_recv() {
                Ok(keys) => {
                    queue = keys;
                    (total, done) = (queue.len(), 0);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        if shared.cancel.swap(false, Ordering::SeqCst) {
            queue.clear();
            continue;
        }
        if queue.is_empty() {
            continue;
        }
        let job = queue.remove(0);
        if events.send(Event::Progress { done, total }).is_err() {
            return;
        }
        let t = Instant::now();
        let progress = |d: usize, n: usize| {
            let _ = events.send(Event::Partial { done: d, total: n });
        };
        let cancelled =
            || shared.cancel.load(Ordering::SeqCst) || shared.generation.load(Ordering::SeqCst) != generation;
        let ctl = Control { batch_size, progress: &progress, cancelled: &cancelled };
        let (Job::Map(key) | Job::Scores(key)) = job;
        let engine = match (key.side, second) {
            (Side::B, Some(b)) => b,
            (Side::B, None) => {
                let message = "no second model (--vs) is open".to_string();
                let _ = events.send(Event::Failed { key, message });
                continue;
            }
            (Side::A, _) => first,
        };
        let map = match maps.get(&key) {
            Some(m) => Ok(m.clone()),
            None => engine.cam_smoothed(key.method, key.stage, key.class, key.smoothing, &ctl).map(Arc::new),
        };
        let outcome = map.and_then(|map| {
            maps.insert(key, map.clone());
            Ok(match job {
                Job::Map(_) => Event::Map { key, map, ms: t.elapsed().as_secs_f64() * 1e3 },
                Job::Scores(_) => {
                    let input = engine.input();
                    let scores = metrics::evaluate(
                        (engine.model(), engine.kind()),
                        input,
                        &map,
                        key.class,
                        GRID_METRIC_STEPS,
                        &ctl,
                    )?;
                    Event::Scores { key, scores }
                }
            })
        });
        let event = match outcome {
            Ok(event) => event,
            // Esc (the flag is cleared at the top of the loop) or a newer request (taken there).
            Err(Error::Cancelled) => continue,
            Err(e) => Event::Failed { key, message: e.to_string() },
        };
        done += 1;
        if events.send(event).is_err() || events.send(Event::Progress { done, total }).is_err() {
            return;
        }
    }
}
