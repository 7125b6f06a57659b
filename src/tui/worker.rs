//! The engine thread. The UI sends the full list of maps it is missing; the worker replaces its
//! queue with the newest list (so stale work is dropped, never queued up behind key presses),
//! computes one map at a time and sends each back as soon as it is ready. Esc raises the cancel
//! flag, which empties the queue at the next check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use camscope::cam::Method;
use camscope::trace::Trace;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapKey {
    pub class: usize,
    pub method: Method,
    pub stage: usize,
}

#[derive(Debug, Clone)]
pub enum Event {
    Map { key: MapKey, map: Arc<Vec<f32>>, ms: f64 },
    Progress { done: usize, total: usize },
    Failed { key: MapKey, message: String },
}

pub struct Worker {
    requests: Option<Sender<Vec<MapKey>>>,
    pub events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Takes ownership of the trace; maps are `size`×`size`.
    pub fn spawn(trace: Trace, size: usize) -> Self {
        let (req_tx, req_rx) = mpsc::channel::<Vec<MapKey>>();
        let (ev_tx, ev_rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("camscope-engine".into())
            .spawn(move || serve(&trace, size, &req_rx, &ev_tx, &flag))
            .expect("spawn the engine thread");
        Self { requests: Some(req_tx), events: ev_rx, cancel, handle: Some(handle) }
    }

    pub fn request(&self, keys: Vec<MapKey>) {
        self.cancel.store(false, Ordering::SeqCst);
        if let Some(tx) = &self.requests {
            // A closed channel means the worker died; its Failed event says why.
            let _ = tx.send(keys);
        }
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
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
    trace: &Trace,
    size: usize,
    requests: &Receiver<Vec<MapKey>>,
    events: &Sender<Event>,
    cancel: &AtomicBool,
) {
    let mut queue: Vec<MapKey> = Vec::new();
    let mut total = 0;
    let mut done = 0;
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
        // Only the newest request counts.
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
        if cancel.swap(false, Ordering::SeqCst) {
            queue.clear();
            continue;
        }
        if queue.is_empty() {
            continue;
        }
        let key = queue.remove(0);
        if events.send(Event::Progress { done, total }).is_err() {
            return;
        }
        let t = Instant::now();
        let event = match trace.cam(key.method, key.stage, key.class, size) {
            Ok(map) => Event::Map { key, map: Arc::new(map), ms: t.elapsed().as_secs_f64() * 1e3 },
            Err(e) => Event::Failed { key, message: e.to_string() },
        };
        done += 1;
        if events.send(event).is_err() || events.send(Event::Progress { done, total }).is_err() {
            return;
        }
    }
}
