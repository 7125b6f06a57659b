//! The shapes of a convolution and of a max-pool, validated before any kernel touches memory.
//! Every length a geometry implies is checked against the largest buffer Rust can allocate, so
//! no size computation downstream can overflow.

/// A convolution or pooling shape the kernels cannot run: the fields do not describe one
/// consistent operation (see [`ConvGeometry::validate`], [`PoolGeometry::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeometryError(String);

impl std::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GeometryError {}

/// Returns a [`GeometryError`] with a formatted message when `cond` holds.
macro_rules! reject_if {
    ($cond:expr, $($msg:tt)+) => {
        if $cond {
            return Err(GeometryError(format!($($msg)+)));
        }
    };
}

/// The largest number of `f32` values one buffer may hold (`Vec` allocations stop at
/// `isize::MAX` bytes). Every length a geometry implies is checked against it, so that no size
/// computation in the kernels can overflow and wrap around to a small, wrong length.
const MAX_VALUES: usize = isize::MAX as usize / std::mem::size_of::<f32>();

/// The product of `factors` if it fits in [`MAX_VALUES`].
fn checked_len(what: &str, factors: &[usize]) -> Result<usize, GeometryError> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .filter(|&n| n <= MAX_VALUES)
        .ok_or_else(|| GeometryError(format!("{what} of {factors:?} values is too large")))
}

/// Shape of one 2-D convolution. Padding may be asymmetric (TensorFlow "SAME"); the kernel may
/// be dilated (its taps `dilation` apart, as in segmentation backbones and ASPP heads).
///
/// The fields are public so that a geometry is easy to read and to write down, but the kernels
/// never trust them: every entry point runs [`ConvGeometry::validate`] before touching memory,
/// because the gemm path writes its output into uninitialised storage block by block, and a
/// geometry whose blocks do not tile the output (say, output channels not divisible by the
/// groups) would otherwise hand back uninitialised memory. [`ConvGeometry::new`] builds a valid
/// one from the padding on all four sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    /// Distance between neighbouring kernel taps (1: a plain convolution).
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub groups: usize,
}

impl ConvGeometry {
    /// The geometry of a convolution of an NCHW `input` by a (out_channels, in_channels/groups,
    /// kernel\[0\], kernel\[1\]) weight, with `pads` = (top, bottom, left, right) zeros and
    /// PyTorch's output size floor((n + before + after − k) / stride) + 1.
    pub fn new(
        input: [usize; 4],
        out_channels: usize,
        kernel: [usize; 2],
        stride: usize,
        pads: [usize; 4],
        groups: usize,
    ) -> Result<Self, GeometryError> {
        Self::dilated(input, out_channels, kernel, stride, 1, pads, groups)
    }

    /// [`ConvGeometry::new`] with the kernel's taps `dilation` apart: the output size is
    /// floor((n + before + after − extent) / stride) + 1 with extent (k − 1)·dilation + 1.
    pub fn dilated(
        input: [usize; 4],
        out_channels: usize,
        kernel: [usize; 2],
        stride: usize,
        dilation: usize,
        pads: [usize; 4],
        groups: usize,
    ) -> Result<Self, GeometryError> {
        let [batch, in_channels, in_h, in_w] = input;
        let [kernel_h, kernel_w] = kernel;
        let [pad_top, pad_bottom, pad_left, pad_right] = pads;
        reject_if!(stride == 0, "convolution stride must be at least 1");
        reject_if!(dilation == 0 || dilation > 1 << 16, "convolution dilation {dilation} is out of range");
        let out = |size: usize, before: usize, after: usize, k: usize| -> Result<usize, GeometryError> {
            let padded = size
                .checked_add(before)
                .and_then(|n| n.checked_add(after))
                .ok_or_else(|| GeometryError("convolution padding overflows".into()))?;
            reject_if!(k == 0 || k > 1 << 16, "a kernel of {k} taps is out of range");
            let extent = (k - 1) * dilation + 1;
            reject_if!(
                padded < extent,
                "a kernel spanning {extent} does not fit an input of {size} padded by {before} and {after}"
            );
            Ok((padded - extent) / stride + 1)
        };
        let g = ConvGeometry {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            dilation,
            pad_top,
            pad_left,
            out_h: out(in_h, pad_top, pad_bottom, kernel_h)?,
            out_w: out(in_w, pad_left, pad_right, kernel_w)?,
            groups,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks that the fields describe one convolution the kernels can run without reading or
    /// writing out of bounds: positive kernel, stride, groups and sizes; channels divisible by
    /// the groups (else the (image, group) blocks do not tile the output, and part of it would
    /// be left uninitialised); an output size that some bottom/right padding ≥ 0 gives
    /// (in + pad_before < out·stride + kernel: no input row is a whole stride or more past the
    /// last window); and no buffer length that overflows.
    pub fn validate(&self) -> Result<(), GeometryError> {
        let g = self;
        reject_if!(
            g.kernel_h == 0 || g.kernel_w == 0 || g.stride == 0 || g.groups == 0 || g.dilation == 0,
            "kernel {}×{}, stride {}, dilation {} and groups {} must all be at least 1",
            g.kernel_h,
            g.kernel_w,
            g.stride,
            g.dilation,
            g.groups
        );
        // Bounds the extents (k − 1)·dilation + 1 the kernels use, so they cannot overflow.
        reject_if!(
            g.kernel_h > 1 << 16 || g.kernel_w > 1 << 16 || g.dilation > 1 << 16,
            "kernel {}×{} with dilation {} is out of range",
            g.kernel_h,
            g.kernel_w,
            g.dilation
        );
        reject_if!(
            g.in_channels == 0 || g.out_channels == 0,
            "a convolution needs channels ({} in, {} out)",
            g.in_channels,
            g.out_channels
        );
        reject_if!(
            !g.in_channels.is_multiple_of(g.groups) || !g.out_channels.is_multiple_of(g.groups),
            "{} input and {} output channels are not both divisible by {} groups",
            g.in_channels,
            g.out_channels,
            g.groups
        );
        reject_if!(
            g.in_h == 0 || g.in_w == 0 || g.out_h == 0 || g.out_w == 0,
            "empty plane: input {}×{}, output {}×{}",
            g.in_h,
            g.in_w,
            g.out_h,
            g.out_w
        );
        checked_len("the input", &[g.batch, g.in_channels, g.in_h, g.in_w])?;
        checked_len("the output", &[g.batch, g.out_channels, g.out_h, g.out_w])?;
        checked_len("the weight", &[g.out_channels, g.in_channels / g.groups, g.kernel_h, g.kernel_w])?;
        checked_len(
            "the unfolded input",
            &[g.in_channels / g.groups, g.kernel_h, g.kernel_w, g.out_h, g.out_w],
        )?;
        // Past the last window by two strides: bounds every extent the kernels derive from the
        // geometry (the depthwise phases round each side up by at most one stride and one row).
        let reach = |out: usize, k: usize, pad: usize, size: usize| {
            checked_len("the padded extent", &[out, g.stride])?
                .checked_add(k)
                .and_then(|n| n.checked_add(2 * g.stride))
                .filter(|&n| n <= MAX_VALUES && pad <= MAX_VALUES && size <= MAX_VALUES)
                .ok_or_else(|| GeometryError("the padded extent is too large".into()))
        };
        let reach_h = reach(g.out_h, g.extent_h(), g.pad_top, g.in_h)?;
        let reach_w = reach(g.out_w, g.extent_w(), g.pad_left, g.in_w)?;
        // The depthwise buffers: stride² phases of at most (reach_h/s)·(reach_w/s) values, each
        // rounded up to a whole register block (64 values), plus one wide output.
        checked_len("the depthwise phases", &[reach_h, reach_w, 128])?;
        // Every term is at most MAX_VALUES (an eighth of usize::MAX) here: the sums cannot wrap.
        reject_if!(
            g.in_h + g.pad_top >= g.out_h * g.stride + g.extent_h()
                || g.in_w + g.pad_left >= g.out_w * g.stride + g.extent_w(),
            "output {}×{} is too small for input {}×{} with kernel {}×{} (dilation {}), stride {}, padding \
             {}/{}",
            g.out_h,
            g.out_w,
            g.in_h,
            g.in_w,
            g.kernel_h,
            g.kernel_w,
            g.dilation,
            g.stride,
            g.pad_top,
            g.pad_left
        );
        Ok(())
    }

    /// Panics, before any kernel touches memory, unless the geometry is valid.
    pub(crate) fn assert_valid(&self) {
        if let Err(e) = self.validate() {
            panic!("invalid convolution geometry: {e}");
        }
    }

    /// Rows of the input one window spans: (kernel_h − 1)·dilation + 1.
    pub(crate) fn extent_h(&self) -> usize {
        (self.kernel_h - 1) * self.dilation + 1
    }
    /// Columns of the input one window spans.
    pub(crate) fn extent_w(&self) -> usize {
        (self.kernel_w - 1) * self.dilation + 1
    }
    pub(crate) fn group_in(&self) -> usize {
        self.in_channels / self.groups
    }
    pub(crate) fn group_out(&self) -> usize {
        self.out_channels / self.groups
    }
    /// Rows of the im2col matrix of one group: one per (input channel, ky, kx).
    pub(crate) fn col_rows(&self) -> usize {
        self.group_in() * self.kernel_h * self.kernel_w
    }
    pub(crate) fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }
    pub(crate) fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.in_channels && self.out_channels == self.in_channels && self.groups > 1
    }
    /// A 1×1, stride-1, unpadded convolution is a plain matrix product on the input itself.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel_h == 1
            && self.kernel_w == 1
            && self.stride == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && self.out_h == self.in_h
            && self.out_w == self.in_w
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_plane()
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_plane()
    }
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.col_rows()
    }
}

/// Input coordinate of output position `o` and kernel tap `k`, if it falls inside the image.
#[inline]
pub(crate) fn source_index(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    let i = (o * stride + k).checked_sub(pad)?;
    (i < size).then_some(i)
}

/// Shape of a max-pool whose padding counts as -∞ (PyTorch `MaxPool2d(padding=p)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub planes: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl PoolGeometry {
    /// The geometry of a max-pool over `planes` planes of `in_h`×`in_w`, with PyTorch's output
    /// size floor((n + 2·pad − kernel) / stride) + 1 (no `ceil_mode`).
    pub fn new(
        planes: usize,
        in_hw: (usize, usize),
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self, GeometryError> {
        let (in_h, in_w) = in_hw;
        reject_if!(
            kernel == 0 || stride == 0,
            "max-pool kernel {kernel} and stride {stride} must be at least 1"
        );
        let out = |size: usize| {
            size.checked_add(2 * pad.min(MAX_VALUES))
                .filter(|&padded| padded >= kernel)
                .map(|padded| (padded - kernel) / stride + 1)
                .ok_or_else(|| {
                    GeometryError(format!("max-pool {kernel}×{kernel} does not fit {in_h}×{in_w}"))
                })
        };
        let g =
            PoolGeometry { planes, in_h, in_w, kernel, stride, pad, out_h: out(in_h)?, out_w: out(in_w)? };
        g.validate()?;
        Ok(g)
    }

    /// Checks that the fields describe one max-pool: kernel and stride at least 1, padding
    /// smaller than the kernel and output sizes exactly PyTorch's. Together these put at least
    /// one input element in every window (the first starts at −pad > −kernel, the last at
    /// most at n − 1 since pad ≤ kernel − 1), so every window has a maximum to route its gradient
    /// to, and no length below overflows.
    pub fn validate(&self) -> Result<(), GeometryError> {
        let g = self;
        reject_if!(
            g.kernel == 0 || g.stride == 0,
            "max-pool kernel {} and stride {} must be at least 1",
            g.kernel,
            g.stride
        );
        reject_if!(
            g.pad >= g.kernel,
            "max-pool padding {} must be smaller than the kernel {}",
            g.pad,
            g.kernel
        );
        reject_if!(g.in_h == 0 || g.in_w == 0, "empty max-pool input {}×{}", g.in_h, g.in_w);
        checked_len("the max-pool input", &[g.planes, g.in_h, g.in_w])?;
        checked_len("the max-pool output", &[g.planes, g.out_h, g.out_w])?;
        let expected = |size: usize| {
            g.pad
                .checked_mul(2)
                .and_then(|pads| size.checked_add(pads))
                .filter(|&padded| padded >= g.kernel)
                .map(|padded| (padded - g.kernel) / g.stride + 1)
        };
        reject_if!(
            expected(g.in_h) != Some(g.out_h) || expected(g.in_w) != Some(g.out_w),
            "max-pool output {}×{} is not the one of input {}×{}, kernel {}, stride {}, padding {}",
            g.out_h,
            g.out_w,
            g.in_h,
            g.in_w,
            g.kernel,
            g.stride,
            g.pad
        );
        Ok(())
    }

    /// Panics unless the geometry is valid and the slices have the lengths it implies.
    pub(crate) fn assert_valid(&self, input_len: usize, output_len: usize) {
        if let Err(e) = self.validate() {
            panic!("invalid max-pool geometry: {e}");
        }
        assert_eq!(input_len, self.planes * self.in_h * self.in_w, "max-pool input length");
        assert_eq!(output_len, self.planes * self.out_h * self.out_w, "max-pool output length");
    }

    /// Flat index inside one input plane of the first maximum of the window at (oy, ox), the
    /// element PyTorch routes the gradient to. NaN wins, as in PyTorch.
    #[inline]
    pub(crate) fn argmax(&self, plane: &[f32], oy: usize, ox: usize) -> usize {
        let mut best = usize::MAX;
        let mut best_v = f32::NEG_INFINITY;
        for ky in 0..self.kernel {
            let Some(iy) = source_index(oy, ky, self.stride, self.pad, self.in_h) else { continue };
            for kx in 0..self.kernel {
                let Some(ix) = source_index(ox, kx, self.stride, self.pad, self.in_w) else { continue };
                let i = iy * self.in_w + ix;
                let v = plane[i];
                if best == usize::MAX || v > best_v || v.is_nan() {
                    best = i;
                    best_v = v;
                    if v.is_nan() {
                        return best;
                    }
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::valid_geometry;

    #[test]
    fn new_computes_pytorch_output_sizes_and_validates() {
        let g = valid_geometry();
        // (9 + 2 − 3) / 2 + 1 = 5 and (8 + 1 − 3) / 2 + 1 = 4.
        assert_eq!((g.out_h, g.out_w, g.pad_top, g.pad_left), (5, 4, 1, 0));
        // ResNet's stem on an odd and an even input; TF-SAME on an even one.
        assert_eq!(ConvGeometry::new([1, 3, 225, 224], 64, [7, 7], 2, [3, 3, 3, 3], 1).unwrap().out_h, 113);
        assert_eq!(ConvGeometry::new([1, 3, 225, 224], 64, [7, 7], 2, [3, 3, 3, 3], 1).unwrap().out_w, 112);
        assert_eq!(ConvGeometry::new([1, 3, 224, 224], 32, [3, 3], 2, [0, 1, 0, 1], 1).unwrap().out_h, 112);
        let bad = [
            ([1, 5, 8, 8], 4, [3, 3], 1, [1, 1, 1, 1], 2, "divisible"),
            ([1, 4, 8, 8], 5, [3, 3], 1, [1, 1, 1, 1], 2, "divisible"),
            ([1, 4, 8, 8], 4, [3, 3], 0, [1, 1, 1, 1], 1, "stride"),
            ([1, 4, 8, 8], 4, [0, 3], 1, [1, 1, 1, 1], 1, "kernel"),
            ([1, 4, 8, 8], 4, [3, 3], 1, [1, 1, 1, 1], 0, "groups"),
            ([1, 4, 2, 8], 4, [5, 3], 1, [1, 1, 1, 1], 1, "does not fit"),
            ([1, 0, 8, 8], 4, [3, 3], 1, [1, 1, 1, 1], 1, "channels"),
            ([1, 4, 8, 0], 4, [1, 1], 1, [1, 1, 1, 1], 1, "empty"),
            ([1, 4, 8, usize::MAX - 1], 4, [3, 3], 1, [1, 1, 1, 1], 1, "overflows"),
            ([1 << 40, 1 << 20, 8, 8], 4, [3, 3], 1, [1, 1, 1, 1], 1, "too large"),
        ];
        for (input, cout, kernel, stride, pads, groups, why) in bad {
            let e = ConvGeometry::new(input, cout, kernel, stride, pads, groups).unwrap_err();
            assert!(
                e.to_string().contains(why),
                "{input:?} {cout} {kernel:?} {stride} {pads:?} {groups}: {e}"
            );
        }
    }

    /// Geometries written field by field are checked too: every way the fields can disagree
    /// with each other is an error, not a kernel reading or writing out of bounds.
    #[test]
    fn validate_rejects_inconsistent_fields() {
        assert_eq!(valid_geometry().validate(), Ok(()));
        type Breakage = (fn(&mut ConvGeometry), &'static str);
        let broken: [Breakage; 9] = [
            // The case that used to return uninitialised output channels from the gemm path.
            (|g| g.out_channels = 7, "divisible"),
            // And the one that did so for input-gradient channels of a 1×1 convolution.
            (|g| g.in_channels = 5, "divisible"),
            (|g| g.groups = 0, "groups"),
            (|g| g.out_h = 0, "empty"),
            // An output that stops a whole stride or more before the input ends.
            (|g| g.out_h = 3, "too small"),
            (|g| g.out_w = 2, "too small"),
            (|g| g.stride = 0, "stride"),
            (|g| g.in_w = usize::MAX / 2, "too large"),
            (|g| g.out_w = usize::MAX / 3, "too large"),
        ];
        for (i, (breaks, why)) in broken.iter().enumerate() {
            let mut g = valid_geometry();
            breaks(&mut g);
            let e = g.validate().unwrap_err();
            assert!(e.to_string().contains(why), "case {i}: {e}");
        }
        // More output than the input needs is fine: it is padding at the bottom/right.
        let mut g = valid_geometry();
        g.out_h += 3;
        assert_eq!(g.validate(), Ok(()));
    }
}
