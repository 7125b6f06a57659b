//! The engine's record of one image through one network: every stage's activation from a single
//! forward pass, and per target class every stage's gradient from a single backward pass.
//!
//! Candle keeps gradients only for `Var` leaves, so a zero `Var` is added to each stage's output
//! (a "tap"); the gradient of the score with respect to the tap is the gradient at that stage
//! (SPEC §7). Weights are plain tensors, so no weight gradient is ever computed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, IndexOp, Tensor, Var};

use crate::cam::Chw;
use crate::error::{Error, Result};
use crate::model::Network;

pub struct Trace {
    activations: Vec<Arc<Chw>>,
    taps: Vec<Var>,
    /// The root of the autograd graph; holding it keeps every intermediate alive for backward.
    logits: Tensor,
    logit_values: Vec<f32>,
    gradients: Mutex<HashMap<usize, Arc<Vec<Arc<Chw>>>>>,
}

/// One row of the top-k list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub logit: f32,
    pub prob: f32,
}

impl Trace {
    /// Runs the forward pass, keeping every stage's activation.
    pub fn new(network: &Network, input: &Tensor) -> Result<Self> {
        let mut x = input.clone();
        let mut activations = Vec::with_capacity(network.num_stages());
        let mut taps = Vec::with_capacity(network.num_stages());
        for i in 0..network.num_stages() {
            let a = network.run_stage(i, &x)?;
            activations.push(Arc::new(Chw::from_tensor(&a)?));
            let tap = Var::zeros(a.shape(), DType::F32, a.device())?;
            x = a.add(tap.as_tensor())?;
            taps.push(tap);
        }
        let logits = network.classify(&x)?;
        let logit_values: Vec<f32> = logits.i(0)?.to_vec1()?;
        if let Some(bad) = logit_values.iter().find(|v| !v.is_finite()) {
            return Err(Error::Model(format!("the network produced a non-finite logit ({bad})")));
        }
        Ok(Self { activations, taps, logits, logit_values, gradients: Mutex::default() })
    }

    pub fn logits(&self) -> &[f32] {
        &self.logit_values
    }

    pub fn num_classes(&self) -> usize {
        self.logit_values.len()
    }

    /// Softmax of the logits.
    pub fn probabilities(&self) -> Vec<f32> {
        let max = self.logit_values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f64> = self.logit_values.iter().map(|&l| ((l - max) as f64).exp()).collect();
        let total: f64 = exp.iter().sum();
        exp.iter().map(|e| (e / total) as f32).collect()
    }

    /// Classes by decreasing logit (ties: lower index first).
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.logit_values.len()).collect();
        order.sort_by(|&a, &b| self.logit_values[b].total_cmp(&self.logit_values[a]).then(a.cmp(&b)));
        order
    }

    pub fn top_class(&self) -> usize {
        self.ranking()[0]
    }

    pub fn top_k(&self, k: usize, labels: &[String]) -> Vec<Prediction> {
        let probs = self.probabilities();
        self.ranking()
            .into_iter()
            .take(k)
            .map(|i| Prediction {
                index: i,
                label: labels[i].clone(),
                logit: self.logit_values[i],
                prob: probs[i],
            })
            .collect()
    }

    /// (C, H, W) of every stage's output, in stage order.
    pub fn shapes(&self) -> Vec<[usize; 3]> {
        self.activations.iter().map(|a| [a.channels, a.height, a.width]).collect()
    }

    pub fn activation(&self, stage: usize) -> &Arc<Chw> {
        &self.activations[stage]
    }

    /// The target score's gradient at every stage, from one backward pass per class (cached).
    pub fn gradients(&self, class: usize) -> Result<Arc<Vec<Arc<Chw>>>> {
        if class >= self.num_classes() {
            return Err(Error::UnknownClass(class.to_string(), self.num_classes() - 1));
        }
        if let Some(g) = self.gradients.lock().expect("gradient cache poisoned").get(&class) {
            return Ok(g.clone());
        }
        let score = self.logits.i((0, class))?;
        let store = score.backward()?;
        let grads = self
            .taps
            .iter()
            .zip(&self.activations)
            .map(|(tap, a)| match store.get(tap.as_tensor()) {
                Some(g) => Ok(Arc::new(Chw::from_tensor(g)?)),
                // A stage the score does not depend on has zero gradient.
                None => Ok(Arc::new(Chw::new(a.channels, a.height, a.width, vec![0.0; a.data.len()]))),
            })
            .collect::<Result<Vec<_>>>()?;
        let grads = Arc::new(grads);
        self.gradients.lock().expect("gradient cache poisoned").insert(class, grads.clone());
        Ok(grads)
    }
}
