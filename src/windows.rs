//! Sliding windows as views over a batch, and the carry-over that lets windows cross batches.
//!
//! A stream (one plant, say) is a sequence of rows with global indices 0, 1, 2, ...
//! Window k covers global rows [k·S, k·S + W) for length W and stride S (1 ≤ S ≤ W).
//!
//! **Row scoring rule (causal).** A row is scored by the most recent window that ends at or before it:
//! row t (t ≥ W-1) gets window k = ⌊(t - W + 1) / S⌋; with stride 1 that is the window of the W rows
//! ending at t. Rows t < W-1 have no full window behind them: they are *warm-up* rows, never scored.
//! Because every row is final as soon as it arrives, a stream fed in any chunking gets exactly the
//! windows, and so the scores, of the same stream fed at once.
//!
//! Between chunks only the rows the next window still needs are kept (at most W-1 per key).
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::scaler::Scaler;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub length: usize,
    pub stride: usize,
}

impl WindowSpec {
    pub fn new(length: usize, stride: usize) -> Result<Self> {
        if length == 0 {
            return Err(Error::Config("window length must be at least 1".into()));
        }
        if stride == 0 || stride > length {
            return Err(Error::Config(format!(
                "window stride must be between 1 and the window length ({length}), got {stride}"
            )));
        }
        Ok(WindowSpec { length, stride })
    }

    /// The window scoring global row `t`, or None for a warm-up row.
    #[inline]
    pub fn window_for_row(&self, t: u64) -> Option<u64> {
        let w = self.length as u64;
        (t + 1 >= w).then(|| (t + 1 - w) / self.stride as u64)
    }

    /// Global index of the first row of window k.
    #[inline]
    pub fn window_start(&self, k: u64) -> u64 {
        k * self.stride as u64
    }
}

/// What one push of new rows for one key produced.
#[derive(Debug, Clone)]
pub struct ChunkPlan {
    /// Carried rows from earlier pushes, row-major (`tail_rows` × F), preceding the new rows.
    pub tail: Vec<f64>,
    pub tail_rows: usize,
    /// Global index of combined row 0 (the first tail row, or the first new row if no tail).
    pub first_global: u64,
    /// Caller's row indices of the new rows, in stream order.
    pub rows: Vec<usize>,
    /// Windows completed by this push: (window index k, position of its first row in the combined rows).
    pub windows: Vec<(u64, usize)>,
    /// For each new row, the window that scores it (None: warm-up row).
    pub row_window: Vec<Option<u64>>,
    n_features: usize,
}

impl ChunkPlan {
    /// Value of combined row `pos` (tail rows first, then new rows), sensor `j`.
    #[inline]
    pub fn value(&self, pos: usize, j: usize, new_rows: &impl Fn(usize, usize) -> f64) -> f64 {
        if pos < self.tail_rows {
            self.tail[pos * self.n_features + j]
        } else {
            new_rows(self.rows[pos - self.tail_rows], j)
        }
    }

    pub fn combined_rows(&self) -> usize {
        self.tail_rows + self.rows.len()
    }
}

#[derive(Debug, Clone, Default)]
struct KeyState {
    tail: Vec<f64>,
    tail_rows: usize,
    /// Rows of this key seen so far (the global index of the next row).
    seen: u64,
}

/// Windows over any number of interleaved streams, carried across pushes.
#[derive(Debug, Clone)]
pub struct WindowStream {
    spec: WindowSpec,
    n_features: usize,
    keys: HashMap<String, KeyState>,
}

impl WindowStream {
    pub fn new(spec: WindowSpec, n_features: usize) -> Self {
        WindowStream { spec, n_features, keys: HashMap::new() }
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// Rows held for the next push, over all keys.
    pub fn carried_rows(&self) -> usize {
        self.keys.values().map(|k| k.tail_rows).sum()
    }

    /// Rows seen so far for `key`.
    pub fn seen(&self, key: &str) -> u64 {
        self.keys.get(key).map_or(0, |k| k.seen)
    }

    /// Appends `rows` (caller's indices, in stream order) to stream `key`; `get(row, j)` reads sensor j
    /// of a caller row. Returns the windows this completes and the scoring window of each new row.
    pub fn push(&mut self, key: &str, rows: Vec<usize>, get: &impl Fn(usize, usize) -> f64) -> ChunkPlan {
        let spec = self.spec;
        let f = self.n_features;
        let state = self.keys.entry(key.to_string()).or_default();
        let first_global = state.seen - state.tail_rows as u64;
        let new_first = state.seen;
        let plan_rows = rows;
        let total = new_first + plan_rows.len() as u64;

        let mut plan = ChunkPlan {
            tail: std::mem::take(&mut state.tail),
            tail_rows: state.tail_rows,
            first_global,
            rows: plan_rows,
            windows: Vec::new(),
            row_window: Vec::new(),
            n_features: f,
        };
        // Windows ending inside the new rows: ends e = kS + W - 1 with new_first <= e < total.
        let w = spec.length as u64;
        let s = spec.stride as u64;
        if total >= w {
            let first_end = new_first.max(w - 1);
            let k_first = (first_end + 1 - w).div_ceil(s);
            let k_last = (total - w) / s;
            for k in k_first..=k_last {
                plan.windows.push((k, (spec.window_start(k) - first_global) as usize));
            }
        }
        plan.row_window = (new_first..total).map(|t| spec.window_for_row(t)).collect();

        // Keep what the next window needs: rows from its start onwards (fewer than W).
        let next_k = if total >= w { (total - w) / s + 1 } else { 0 };
        let keep_from = spec.window_start(next_k).max(first_global).min(total);
        let mut tail = Vec::with_capacity(((total - keep_from) as usize) * f);
        for pos in (keep_from - first_global) as usize..plan.combined_rows() {
            for j in 0..f {
                tail.push(plan.value(pos, j, get));
            }
        }
        state.tail_rows = (total - keep_from) as usize;
        state.tail = tail;
        state.seen = total;
        plan
    }
}

/// Writes the windows starting at combined positions `starts` into `out` as a row-major f32 block
/// [starts.len(), W, F], scaled when a scaler is given. This is the only copy of window data: straight
/// from the batch's columns (and the small carried tail) into the tensor's memory.
pub fn fill_windows(
    plan: &ChunkPlan,
    starts: &[usize],
    length: usize,
    scaler: Option<&Scaler>,
    get: &impl Fn(usize, usize) -> f64,
    out: &mut [f32],
) {
    let f = plan.n_features;
    assert_eq!(out.len(), starts.len() * length * f, "output buffer has the wrong size");
    for (b, &start) in starts.iter().enumerate() {
        for step in 0..length {
            let base = (b * length + step) * f;
            let pos = start + step;
            for j in 0..f {
                let v = plan.value(pos, j, get);
                out[base + j] = match scaler {
                    Some(sc) => sc.apply(v, j) as f32,
                    None => v as f32,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes `series` (rows × F) in chunks of the given sizes; returns (k, window values) in order.
    fn windows_by_chunks(spec: WindowSpec, series: &[Vec<f64>], chunks: &[usize]) -> Vec<(u64, Vec<f32>)> {
        let f = series[0].len();
        let mut stream = WindowStream::new(spec, f);
        let mut out = Vec::new();
        let mut at = 0;
        for &n in chunks {
            let rows: Vec<usize> = (at..at + n).collect();
            let get = |r: usize, j: usize| series[r][j];
            let plan = stream.push("k", rows, &get);
            let starts: Vec<usize> = plan.windows.iter().map(|w| w.1).collect();
            let mut buf = vec![0f32; starts.len() * spec.length * f];
            fill_windows(&plan, &starts, spec.length, None, &get, &mut buf);
            for (i, (k, _)) in plan.windows.iter().enumerate() {
                out.push((*k, buf[i * spec.length * f..(i + 1) * spec.length * f].to_vec()));
            }
            assert!(stream.carried_rows() < spec.length);
            at += n;
        }
        out
    }

    #[test]
    fn chunked_equals_whole_for_every_stride() {
        let series: Vec<Vec<f64>> = (0..53).map(|i| vec![i as f64, -(i as f64)]).collect();
        for (w, s) in [(1, 1), (5, 1), (5, 2), (5, 5), (7, 3)] {
            let spec = WindowSpec::new(w, s).unwrap();
            let whole = windows_by_chunks(spec, &series, &[53]);
            let expected: Vec<u64> = (0..).take_while(|k| k * s as u64 + w as u64 <= 53).collect();
            assert_eq!(whole.iter().map(|x| x.0).collect::<Vec<_>>(), expected);
            for (k, vals) in &whole {
                assert_eq!(vals[0], (*k * s as u64) as f32, "window {k} starts at k*S");
            }
            for chunks in [vec![1; 53], vec![3, 0, 10, 1, 39], vec![20, 33], vec![0, 52, 1]] {
                assert_eq!(windows_by_chunks(spec, &series, &chunks), whole, "W={w} S={s} {chunks:?}");
            }
        }
    }

    #[test]
    fn causal_row_rule() {
        let spec = WindowSpec::new(3, 2).unwrap();
        let got: Vec<Option<u64>> = (0..8).map(|t| spec.window_for_row(t)).collect();
        assert_eq!(got, [None, None, Some(0), Some(0), Some(1), Some(1), Some(2), Some(2)]);
        assert!(WindowSpec::new(3, 4).is_err());
        assert!(WindowSpec::new(0, 1).is_err());
    }

    #[test]
    fn keys_are_independent() {
        let spec = WindowSpec::new(2, 1).unwrap();
        let mut stream = WindowStream::new(spec, 1);
        let get = |r: usize, _j: usize| r as f64;
        let a = stream.push("a", vec![0, 2], &get);
        let b = stream.push("b", vec![1], &get);
        assert_eq!(a.windows, vec![(0, 0)]);
        assert!(b.windows.is_empty());
        assert_eq!(b.row_window, vec![None]);
        let b2 = stream.push("b", vec![3], &get);
        assert_eq!(b2.windows, vec![(0, 0)]);
        assert_eq!(b2.tail, vec![1.0]);
        assert_eq!(stream.seen("a"), 2);
    }
}
