//! One pool of worker threads for every CPU kernel of the fast engine: Candle's own.
//!
//! Why not rayon: Candle 0.11 runs its element-wise ops on a pool of its own (`candle-bp-*`)
//! whose workers busy-wait for ~1 ms after each op before they sleep. Our kernels ran on rayon's
//! threads meanwhile, so on a two-core machine three threads wanted two cores between any Candle
//! op and the next product: ViT-Tiny's all-stage trace took 117 ms. On Candle's pool the worker
//! that just finished an Add is still spinning when the next product comes, and picks it up at
//! once: 58 ms.
//!
//! The closures given here must not call Candle ops (which use the same pool: a nested call from
//! the thread that started the work would wait on itself). They work on slices only.

use candle_core::utils::barrier_pool;
use std::sync::Mutex;

/// How many threads share the work: the pool's workers and the calling thread.
pub(crate) fn threads() -> usize {
    barrier_pool().n_workers() + 1
}

/// Runs `f(index, chunk)` for the chunks of `chunk` values of `data` (the last may be shorter),
/// `per_task` consecutive chunks to a task so that a task is worth its hand-over; on the calling
/// thread alone when there is one task.
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk: usize,
    per_task: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    for_each_chunk_with(data, chunk, per_task, || (), |(), i, c| f(i, c));
}

/// [`for_each_chunk`] with a scratch value made by `init` once per task, for kernels that need
/// a buffer per thread.
pub(crate) fn for_each_chunk_with<T: Send, S>(
    data: &mut [T],
    chunk: usize,
    per_task: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let task_len = chunk * per_task.max(1);
    let run = |first_chunk: usize, task: &mut [T]| {
        let mut scratch = init();
        for (j, c) in task.chunks_mut(chunk).enumerate() {
            f(&mut scratch, first_chunk + j, c);
        }
    };
    if data.len() <= task_len || threads() == 1 {
        run(0, data);
        return;
    }
    // Each task is taken once: a mutex per task hands its slice to the thread that claims it
    // (uncontended, tens of nanoseconds against tasks of ≥16k values).
    let tasks: Vec<Mutex<Option<&mut [T]>>> =
        data.chunks_mut(task_len).map(|t| Mutex::new(Some(t))).collect();
    barrier_pool().execute_chunked(tasks.len(), |claimed| {
        for t in claimed {
            if let Some(task) = tasks[t].lock().expect("a task is claimed once").take() {
                run(t * per_task.max(1), task);
            }
        }
    });
}

/// Planes per task, so that a task does at least ~16k elements of work: small planes (7×7
/// at the end of a network) are otherwise dominated by scheduling.
pub(crate) fn planes_per_task(plane: usize) -> usize {
    (16_384 / plane.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every chunk is visited once, with its index, whatever the split into tasks.
    #[test]
    fn visits_every_chunk_once_with_its_index() {
        for (len, chunk, per_task) in [(0, 4, 1), (10, 3, 1), (100_000, 7, 3), (64, 64, 1), (65, 8, 100)] {
            let mut data = vec![0usize; len];
            for_each_chunk(&mut data, chunk, per_task, |i, c| c.iter_mut().for_each(|v| *v += i + 1));
            for (pos, v) in data.iter().enumerate() {
                assert_eq!(*v, pos / chunk + 1, "len {len}, chunk {chunk}, per task {per_task}");
            }
        }
    }

    /// The scratch value is made per task and reused within it.
    #[test]
    fn scratch_is_per_task() {
        let mut data = vec![0usize; 1000];
        for_each_chunk_with(&mut data, 10, 5, Vec::new, |seen: &mut Vec<usize>, i, c| {
            seen.push(i);
            c.fill(seen.len());
        });
        for (i, c) in data.chunks(10).enumerate() {
            assert!(c.iter().all(|&v| v == i % 5 + 1), "chunk {i}: {c:?}");
        }
    }
}
