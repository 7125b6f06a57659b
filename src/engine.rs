//! The engine: one image through one network, and any map of it on demand. Gradient methods read
//! the trace (one forward, one backward per class, cached); perturbation methods run extra forward
//! passes through the network, reporting progress and honouring cancellation.

use std::sync::Arc;

use candle_core::Tensor;

use crate::cam::{self, Chw, Control, Kind, Method};
use crate::error::Result;
use crate::model::Network;
use crate::trace::Trace;

pub struct Engine {
    network: Arc<Network>,
    input: Tensor,
    trace: Trace,
}

impl Engine {
    /// Runs the forward pass of `input` (1×3×S×S).
    pub fn new(network: Arc<Network>, input: Tensor) -> Result<Self> {
        let trace = Trace::new(&network, &input)?;
        Ok(Self { network, input, trace })
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Side of the (square) input, which is the side of every finished map.
    pub fn size(&self) -> usize {
        self.input.dims().last().copied().unwrap_or(0)
    }

    /// The map of `method` at `stage` for `class` at stage resolution (FullGrad: the input's),
    /// before post-processing.
    pub fn stage_map(&self, method: Method, stage: usize, class: usize, ctl: &Control) -> Result<Vec<f32>> {
        let a = self.trace.activation(stage);
        match method.kind() {
            Kind::Gradient => {
                let g = self.trace.gradients(class)?;
                Ok(method.stage_map(a, &g[stage]).expect("gradient methods are pure"))
            }
            Kind::Activation => {
                let zero = Chw::new(a.channels, a.height, a.width, vec![0.0; a.data.len()]);
                Ok(method.stage_map(a, &zero).expect("activation methods are pure"))
            }
            // FullGrad has no stage: its map is at the input's resolution.
            Kind::WholeNetwork => cam::fullgrad_map(&self.network, &self.input, class),
            Kind::Perturbation => match method {
                Method::ScoreCam => cam::scorecam_map(&self.network, &self.input, a, class, ctl),
                _ => {
                    let score = self.trace.logits()[class];
                    cam::ablationcam_map(&self.network, stage, a, score, class, ctl)
                }
            },
        }
    }

    /// The finished map (SPEC §2): size×size in [0, 1].
    pub fn cam(&self, method: Method, stage: usize, class: usize, ctl: &Control) -> Result<Vec<f32>> {
        if method.kind() == Kind::WholeNetwork {
            let mut map = cam::fullgrad_map(&self.network, &self.input, class)?;
            cam::relu_min_max(&mut map);
            return Ok(map);
        }
        let a = self.trace.activation(stage);
        let raw = self.stage_map(method, stage, class, ctl)?;
        Ok(cam::finish(&raw, a.height, a.width, self.size()))
    }
}
