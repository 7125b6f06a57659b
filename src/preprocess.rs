//! From a file on disk to the tensor the network sees, plus the RGB "input view" the heat map is
//! drawn over. Images follow the model card exactly (decode, alpha on white, antialiased bilinear
//! resize like PIL's `BILINEAR` until the image covers the frame, centre crop, normalise); `.npy` tensors are
//! taken as they are.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Larger images are refused before decoding: a header can claim any size.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
const MAX_DECODE_BYTES: u64 = 1 << 30;
/// The sample image (a bull mastiff above a tabby cat) used when no image is given.
pub const SAMPLE_PNG: &[u8] = include_bytes!("../assets/both.png");
pub const SAMPLE_NAME: &str = "(built-in sample both.png)";

/// Height and width of the frame the network sees, which is also the frame every finished map
/// lives on. A card writes a square as one number (`input_size = 224`), any other as
/// `[height, width]` (PyTorch's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "SizeSpec", into = "SizeSpec")]
pub struct InputSize {
    pub height: usize,
    pub width: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Square(usize),
    HeightWidth([usize; 2]),
}

impl From<SizeSpec> for InputSize {
    fn from(s: SizeSpec) -> Self {
        match s {
            SizeSpec::Square(side) => InputSize::square(side),
            SizeSpec::HeightWidth([height, width]) => InputSize { height, width },
        }
    }
}

impl From<InputSize> for SizeSpec {
    fn from(s: InputSize) -> Self {
        if s.height == s.width {
            SizeSpec::Square(s.height)
        } else {
            SizeSpec::HeightWidth([s.height, s.width])
        }
    }
}

/// A square of this side.
impl From<usize> for InputSize {
    fn from(side: usize) -> Self {
        InputSize::square(side)
    }
}

impl InputSize {
    pub const fn square(side: usize) -> Self {
        InputSize { height: side, width: side }
    }

    pub const fn new(height: usize, width: usize) -> Self {
        InputSize { height, width }
    }

    /// Pixels of the frame: the length of a map on it.
    pub const fn area(&self) -> usize {
        self.height * self.width
    }

    pub fn shorter(&self) -> usize {
        self.height.min(self.width)
    }

    /// The frame of a picture on it (an input view, a map's overlay).
    pub fn of_image(image: &RgbImage) -> Self {
        InputSize::new(image.height() as usize, image.width() as usize)
    }
}

impl std::fmt::Display for InputSize {
    /// Width × height, as image sizes are written everywhere else in camscope's messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}", self.width, self.height)
    }
}

/// How a model wants its images: what a model card's `[preprocess]` says, and what a source
/// assumes without a card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// The frame the network sees.
    pub input_size: InputSize,
    /// The image is scaled so that it covers the frame grown by `resize / min(height, width)`,
    /// then centre-cropped to the frame. For a square frame that is torchvision's
    /// `Resize(resize)` (the shorter side) + `CenterCrop(input_size)`.
    pub resize: usize,
    /// Per-channel mean and std, in pixel units (0..255).
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// ImageNet's mean and std at `size` (resize to size/0.875, centre crop): what torchvision
    /// and timm classifiers expect unless told otherwise.
    pub fn imagenet(size: impl Into<InputSize>) -> Self {
        let size = size.into();
        Preprocess {
            input_size: size,
            resize: (size.shorter() as f64 / 0.875).round() as usize,
            ..Self::whole(size)
        }
    }

    /// ImageNet's mean and std, the image scaled to just cover the frame (no margin cropped):
    /// what a segmentation model is evaluated on.
    pub fn whole(size: impl Into<InputSize>) -> Self {
        let size = size.into();
        Preprocess {
            input_size: size,
            resize: size.shorter(),
            mean: [123.675, 116.28, 103.53],
            std: [58.395, 57.12, 57.375],
        }
    }

    /// Why these settings cannot preprocess an image, if they cannot (a card's mistake).
    pub fn problem(&self) -> Option<String> {
        let InputSize { height, width } = self.input_size;
        if height < 1 || width < 1 {
            Some(format!("input_size {height}×{width} is empty"))
        } else if self.resize < self.input_size.shorter() {
            Some(format!(
                "resize {} is smaller than the input's shorter side {}: the crop would not be covered",
                self.resize,
                self.input_size.shorter()
            ))
        } else if self.std.iter().any(|s| *s == 0.0 || !s.is_finite())
            || self.mean.iter().any(|m| !m.is_finite())
        {
            Some("mean and std must be finite and std non-zero".into())
        } else {
            None
        }
    }
}

/// What the network is run on, and what a person is shown.
pub struct ModelInput {
    /// (1, 3, H, W) f32.
    pub tensor: Tensor,
    /// The H×W crop the tensor was made from (for `.npy`, the tensor de-normalised).
    pub view: RgbImage,
    /// Where it came from, for messages and reports.
    pub source: String,
    /// How the original image's pixels map onto `view` (an `.npy` input maps one to one).
    pub geometry: CropGeometry,
}

impl ModelInput {
    /// The frame the network sees and the maps live on.
    pub fn frame(&self) -> InputSize {
        InputSize::of_image(&self.view)
    }
}

/// Loads an image or `.npy` file, or the built-in sample when `path` is `None`.
pub fn load_input(path: Option<&Path>, pp: &Preprocess) -> Result<ModelInput> {
    let Some(path) = path else {
        let img = image::load_from_memory(SAMPLE_PNG)
            .map_err(|e| Error::Image { path: SAMPLE_NAME.into(), message: e.to_string() })?;
        return from_image(img, pp, SAMPLE_NAME.into());
    };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::Image { path: path.into(), message: "is a directory".into() });
    }
    if meta.len() == 0 {
        return Err(Error::Image { path: path.into(), message: "the file is empty".into() });
    }
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        return load_npy(path, pp);
    }
    let img = decode_image(path)?;
    from_image(img, pp, path.display().to_string())
}

pub(crate) fn decode_image(path: &Path) -> Result<DynamicImage> {
    let err = |message: String| Error::Image { path: path.into(), message };
    let open = || {
        image::ImageReader::open(path)
            .map_err(|e| Error::io(path, e))?
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))
    };
    let reader = open()?;
    if reader.format().is_none() {
        return Err(err("not a recognised image format (PNG, JPEG, WebP, BMP, GIF, …)".into()));
    }
    let (w, h) = reader.into_dimensions().map_err(|e| err(format!("cannot read the header: {e}")))?;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(err(format!(
            "{w}×{h} pixels is larger than the {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} camscope accepts"
        )));
    }
    if w == 0 || h == 0 {
        return Err(err(format!("{w}×{h} pixels: the image is empty")));
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| err(format!("cannot decode: {e}")))
}

/// RGB 8-bit, transparency composited on white.
fn to_rgb_on_white(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba32f();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let on_white = |c: f32| ((c * a + (1.0 - a)) * 255.0).round().clamp(0.0, 255.0) as u8;
        image::Rgb([on_white(r), on_white(g), on_white(b)])
    })
}

/// Python's `round` (ties to even), which the reference preprocessing used.
fn py_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// Where the pixels of a w×h image land in the network's input: scaled as [`Preprocess::resize`]
/// says, then centre-cropped to the frame. Boxes and masks go through the very same steps
/// (SPEC §10), so this is computed in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropGeometry {
    /// The original image's size.
    pub original: (usize, usize),
    /// Its size after the resize (W′, H′).
    pub resized: (usize, usize),
    /// The crop's offset in the resized image.
    pub left: usize,
    pub top: usize,
    /// The crop: the frame the maps live on.
    pub frame: InputSize,
}

impl CropGeometry {
    pub fn new(width: usize, height: usize, pp: &Preprocess) -> Self {
        let frame = pp.input_size;
        // The frame grown by resize / shorter side; the image's side that binds (the one whose
        // ratio to the grown frame is smaller) gets exactly that length, the other follows the
        // aspect ratio. A square frame makes this "the shorter side becomes `resize`".
        let grow = pp.resize as f64 / frame.shorter().max(1) as f64;
        let (gw, gh) = (frame.width as f64 * grow, frame.height as f64 * grow);
        let (w, h) = (width as f64, height as f64);
        let (nw, nh) = if frame.width * height >= frame.height * width {
            let nw = py_round(gw).max(1);
            (nw, py_round(h * nw as f64 / w).max(1))
        } else {
            let nh = py_round(gh).max(1);
            (py_round(w * nh as f64 / h).max(1), nh)
        };
        // With `resize` ≥ the shorter side (`Preprocess::problem`) the resized image covers the
        // frame; the clamp keeps a bad card from underflowing.
        let frame = InputSize::new(frame.height.min(nh), frame.width.min(nw));
        CropGeometry {
            original: (width, height),
            resized: (nw, nh),
            left: py_round((nw - frame.width) as f64 / 2.0),
            top: py_round((nh - frame.height) as f64 / 2.0),
            frame,
        }
    }
}

/// Scale as `pp.resize` says (antialiased bilinear), then centre-crop to the frame.
pub fn resize_and_crop(img: &RgbImage, pp: &Preprocess) -> Result<RgbImage> {
    let g = CropGeometry::new(img.width() as usize, img.height() as usize, pp);
    let (nw, nh) = g.resized;
    let resized = if g.resized == g.original { img.clone() } else { resize_bilinear_like_pil(img, nw, nh) };
    let InputSize { height, width } = g.frame;
    Ok(image::imageops::crop_imm(&resized, g.left as u32, g.top as u32, width as u32, height as u32)
        .to_image())
}

/// One output pixel's taps: the first input index and 22-bit fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

const PRECISION_BITS: u32 = 22;

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear (triangle) filter: the
/// support widens with the downscale factor, which is the antialiasing.
fn pil_taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    (0..out_size)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let last = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (first..last)
                .map(|i| {
                    let x = ((i as f64 - center + 0.5) / filter_scale).abs();
                    if x < 1.0 {
                        1.0 - x
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let fixed = w * (1u32 << PRECISION_BITS) as f64;
                    (if fixed < 0.0 { fixed - 0.5 } else { fixed + 0.5 }) as i32
                })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

#[inline]
fn fixed_to_u8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL's `Image.resize(BILINEAR)` on RGB, bit for bit: a horizontal then a vertical pass, each
/// rounded to 8 bits. Written out rather than taken from a resize crate because the reference
/// tensors were made with PIL, and the crates we tried differ from it by one grey level on ~15% of
/// values, which is enough to reorder close predictions.
pub fn resize_bilinear_like_pil(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let round = 1i64 << (PRECISION_BITS - 1);
    let xs = pil_taps(w, out_w);
    let mut horizontal = vec![0u8; out_w * h * 3];
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for (x, t) in xs.iter().enumerate() {
            for c in 0..3 {
                let acc = t
                    .weights
                    .iter()
                    .enumerate()
                    .fold(round, |acc, (k, &wt)| acc + row[(t.first + k) * 3 + c] as i64 * wt as i64);
                horizontal[(y * out_w + x) * 3 + c] = fixed_to_u8(acc);
            }
        }
    }
    let ys = pil_taps(h, out_h);
    let mut out = vec![0u8; out_w * out_h * 3];
    for (y, t) in ys.iter().enumerate() {
        for i in 0..out_w * 3 {
            let acc = t.weights.iter().enumerate().fold(round, |acc, (k, &wt)| {
                acc + horizontal[(t.first + k) * out_w * 3 + i] as i64 * wt as i64
            });
            out[y * out_w * 3 + i] = fixed_to_u8(acc);
        }
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, out).expect("buffer matches its size")
}

/// (1, 3, H, W) tensor of (pixel − mean) / std.
pub fn normalise(view: &RgbImage, pp: &Preprocess) -> Result<Tensor> {
    let (w, h) = (view.width() as usize, view.height() as usize);
    let mut data = vec![0f32; 3 * w * h];
    for (i, p) in view.pixels().enumerate() {
        for c in 0..3 {
            data[c * w * h + i] = (p.0[c] as f32 - pp.mean[c]) / pp.std[c];
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu)?)
}

fn from_image(img: DynamicImage, pp: &Preprocess, source: String) -> Result<ModelInput> {
    let geometry = CropGeometry::new(img.width() as usize, img.height() as usize, pp);
    let view = resize_and_crop(&to_rgb_on_white(&img), pp)?;
    let tensor = normalise(&view, pp)?;
    Ok(ModelInput { tensor, view, source, geometry })
}

fn load_npy(path: &Path, pp: &Preprocess) -> Result<ModelInput> {
    let err = |message: String| Error::Input { path: path.into(), message };
    let t = Tensor::read_npy(path).map_err(|e| err(format!("not a readable .npy file ({e})")))?;
    let t = t.to_dtype(DType::F32)?;
    let t = match t.dims() {
        [3, h, w] => t.reshape((1, 3, *h, *w))?,
        [1, 3, _, _] => t,
        d => return Err(err(format!("shape {d:?}; expected 1×3×H×W or 3×H×W"))),
    };
    let (_, _, h, w) = t.dims4()?;
    if h.min(w) < 32 {
        return Err(err(format!("shape {:?}; expected an input of at least 32×32", t.dims())));
    }
    let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(err(format!("holds a non-finite value ({}) at flat index {i}", values[i])));
    }
    let plane = h * w;
    let view = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        let px = |c: usize| (values[c * plane + i] * pp.std[c] + pp.mean[c]).round().clamp(0.0, 255.0) as u8;
        image::Rgb([px(0), px(1), px(2)])
    });
    let geometry =
        CropGeometry { original: (w, h), resized: (w, h), left: 0, top: 0, frame: InputSize::new(h, w) };
    Ok(ModelInput { tensor: t, view, source: path.display().to_string(), geometry })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp() -> Preprocess {
        Preprocess { input_size: InputSize::square(8), resize: 10, mean: [127.0; 3], std: [128.0; 3] }
    }

    #[test]
    fn python_rounding_is_ties_to_even() {
        assert_eq!(py_round(0.5), 0);
        assert_eq!(py_round(1.5), 2);
        assert_eq!(py_round(2.5), 2);
    }

    #[test]
    fn odd_aspect_ratios_crop_to_the_input_size() {
        for (w, h) in [(1, 1), (300, 4), (4, 300), (10, 10), (13, 11)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([200, 10, 30]));
            let view = resize_and_crop(&img, &pp()).unwrap();
            assert_eq!(view.dimensions(), (8, 8), "{w}×{h}");
            // A flat colour stays flat through an antialiased resize.
            assert!(view.pixels().all(|p| p.0 == [200, 10, 30]));
        }
    }

    #[test]
    fn a_square_frame_resizes_the_shorter_side_as_torchvision_does() {
        let pp = Preprocess { input_size: InputSize::square(224), resize: 256, ..pp() };
        let g = CropGeometry::new(500, 375, &pp);
        // Resize(256): 375 → 256, 500 → round(500 · 256 / 375) = 341; CenterCrop(224).
        assert_eq!((g.resized, g.left, g.top, g.frame), ((341, 256), 58, 16, InputSize::square(224)));
        let g = CropGeometry::new(375, 500, &pp);
        assert_eq!((g.resized, g.left, g.top), ((256, 341), 16, 58));
    }

    #[test]
    fn a_wide_frame_is_covered_by_the_binding_side() {
        // 96 high × 160 wide, no margin: a 4:3 photo binds by its width (160 / 640 < 96 / 480).
        let pp = Preprocess { input_size: InputSize::new(96, 160), resize: 96, ..pp() };
        let g = CropGeometry::new(640, 480, &pp);
        assert_eq!((g.resized, g.left, g.top, g.frame), ((160, 120), 0, 12, InputSize::new(96, 160)));
        // A panorama binds by its height.
        let g = CropGeometry::new(1000, 100, &pp);
        assert_eq!((g.resized, g.left, g.top), ((960, 96), 400, 0));
        // The same aspect ratio maps exactly, and a margin grows both sides of the frame.
        assert_eq!(CropGeometry::new(320, 192, &pp).resized, (160, 96));
        let g = CropGeometry::new(320, 192, &Preprocess { resize: 120, ..pp.clone() });
        assert_eq!((g.resized, g.left, g.top), ((200, 120), 20, 12));
        for (w, h) in [(1, 1), (300, 4), (4, 300), (161, 95), (13, 11)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([200, 10, 30]));
            let view = resize_and_crop(&img, &pp).unwrap();
            assert_eq!(view.dimensions(), (160, 96), "{w}×{h}");
        }
    }

    #[test]
    fn a_card_writes_a_square_as_one_number_and_other_frames_as_height_width() {
        #[derive(Deserialize, Serialize)]
        struct Card {
            input_size: InputSize,
        }
        let square: Card = toml::from_str("input_size = 224").unwrap();
        assert_eq!(square.input_size, InputSize::square(224));
        let wide: Card = toml::from_str("input_size = [96, 160]").unwrap();
        assert_eq!(wide.input_size, InputSize::new(96, 160));
        assert_eq!(wide.input_size.to_string(), "160×96");
        assert_eq!(toml::to_string(&wide).unwrap().trim(), "input_size = [96, 160]");
        assert_eq!(toml::to_string(&square).unwrap().trim(), "input_size = 224");
    }

    #[test]
    fn a_resize_that_cannot_cover_the_frame_is_a_problem() {
        let pp = Preprocess { input_size: InputSize::new(96, 160), resize: 90, ..pp() };
        assert!(pp.problem().unwrap().contains("smaller than the input's shorter side 96"));
        assert_eq!(Preprocess { resize: 96, ..pp }.problem(), None);
    }

    #[test]
    fn alpha_is_composited_on_white() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(2, 2, image::Rgba([0, 0, 0, 0])));
        assert!(to_rgb_on_white(&img).pixels().all(|p| p.0 == [255, 255, 255]));
        let half = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(1, 1, image::Rgba([0, 0, 0, 128])));
        assert_eq!(to_rgb_on_white(&half).get_pixel(0, 0).0, [127, 127, 127]);
    }

    #[test]
    fn normalisation_is_channel_first() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([255, 127, 0]));
        let t = normalise(&img, &pp()).unwrap();
        assert_eq!(t.dims(), [1, 3, 1, 2]);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, [1.0, -127.0 / 128.0, 0.0, -127.0 / 128.0, -127.0 / 128.0, -127.0 / 128.0]);
    }
}
