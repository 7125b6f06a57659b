//! Turns a terminal capture with colours (`tmux capture-pane -e -p`) into a PNG, for the README's
//! screenshot of a real run. Not part of camscope itself.
//!
//! ```sh
//! tmux capture-pane -e -p -t SESSION | cargo run --release --example screenshot -- docs/screenshot.png
//! ```

use std::io::Read;

use font8x8::{UnicodeFonts, BASIC_FONTS, BLOCK_FONTS, BOX_FONTS, LATIN_FONTS, MISC_FONTS};
use image::{Rgb, RgbImage};

const CELL_W: u32 = 8;
const CELL_H: u32 = 16;
const DEFAULT_FG: [u8; 3] = [208, 208, 208];
const DEFAULT_BG: [u8; 3] = [24, 24, 32];

#[derive(Clone, Copy)]
struct Cell {
    ch: char,
    fg: [u8; 3],
    bg: [u8; 3],
}

/// The 256-colour palette's entry `i` (xterm).
fn palette(i: u8) -> [u8; 3] {
    const BASE: [[u8; 3]; 16] = [
        [0, 0, 0],
        [205, 0, 0],
        [0, 205, 0],
        [205, 205, 0],
        [0, 0, 238],
        [205, 0, 205],
        [0, 205, 205],
        [229, 229, 229],
        [127, 127, 127],
        [255, 0, 0],
        [0, 255, 0],
        [255, 255, 0],
        [92, 92, 255],
        [255, 0, 255],
        [0, 255, 255],
        [255, 255, 255],
    ];
    match i {
        0..=15 => BASE[i as usize],
        16..=231 => {
            let i = i - 16;
            let level = |v: u8| if v == 0 { 0 } else { 55 + 40 * v };
            [level(i / 36), level((i / 6) % 6), level(i % 6)]
        }
        _ => {
            let v = 8 + 10 * (i - 232);
            [v, v, v]
        }
    }
}

/// Applies one SGR sequence's parameters.
fn sgr(params: &[u16], fg: &mut [u8; 3], bg: &mut [u8; 3]) {
    let mut i = 0;
    while i < params.len() {
        match params[i] {
            0 => (*fg, *bg) = (DEFAULT_FG, DEFAULT_BG),
            39 => *fg = DEFAULT_FG,
            49 => *bg = DEFAULT_BG,
            c @ 30..=37 => *fg = palette((c - 30) as u8),
            c @ 40..=47 => *bg = palette((c - 40) as u8),
            c @ 90..=97 => *fg = palette((c - 90 + 8) as u8),
            c @ 100..=107 => *bg = palette((c - 100 + 8) as u8),
            c @ (38 | 48) => {
                let target = if c == 38 { &mut *fg } else { &mut *bg };
                match params.get(i + 1) {
                    Some(2) if i + 4 < params.len() => {
                        *target = [params[i + 2] as u8, params[i + 3] as u8, params[i + 4] as u8];
                        i += 4;
                    }
                    Some(5) if i + 2 < params.len() => {
                        *target = palette(params[i + 2] as u8);
                        i += 2;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        i += 1;
    }
}

fn parse(text: &str) -> Vec<Vec<Cell>> {
    let (mut fg, mut bg) = (DEFAULT_FG, DEFAULT_BG);
    let mut rows = vec![Vec::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                let mut seq = String::new();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        if d == 'm' {
                            let params: Vec<u16> =
                                seq.split([';', ':']).map(|p| p.parse().unwrap_or(0)).collect();
                            sgr(&params, &mut fg, &mut bg);
                        }
                        break;
                    }
                    seq.push(d);
                }
            }
            '\n' => rows.push(Vec::new()),
            c => rows.last_mut().unwrap().push(Cell { ch: c, fg, bg }),
        }
    }
    rows
}

fn glyph(c: char) -> Option<[u8; 8]> {
    BASIC_FONTS
        .get(c)
        .or_else(|| LATIN_FONTS.get(c))
        .or_else(|| BOX_FONTS.get(c))
        .or_else(|| BLOCK_FONTS.get(c))
        .or_else(|| MISC_FONTS.get(c))
}

fn draw(img: &mut RgbImage, x0: u32, y0: u32, cell: Cell) {
    for y in 0..CELL_H {
        for x in 0..CELL_W {
            img.put_pixel(x0 + x, y0 + y, Rgb(cell.bg));
        }
    }
    // The upper half block carries two pixels of a half-block image: draw it exactly.
    if cell.ch == '▀' {
        for y in 0..CELL_H / 2 {
            for x in 0..CELL_W {
                img.put_pixel(x0 + x, y0 + y, Rgb(cell.fg));
            }
        }
        return;
    }
    let Some(rows) =
        glyph(cell.ch).or_else(|| (cell.ch != ' ').then_some([0, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0]))
    else {
        return;
    };
    for (gy, bits) in rows.iter().enumerate() {
        for gx in 0..8 {
            if bits & (1 << gx) != 0 {
                // Each font row is drawn twice: 8×8 glyphs in 8×16 cells.
                img.put_pixel(x0 + gx, y0 + 2 * gy as u32, Rgb(cell.fg));
                img.put_pixel(x0 + gx, y0 + 2 * gy as u32 + 1, Rgb(cell.fg));
            }
        }
    }
}

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "screenshot.png".into());
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).expect("read the capture from stdin");
    let mut rows = parse(&text);
    while rows.last().is_some_and(|r| r.is_empty()) {
        rows.pop();
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let mut img = RgbImage::from_pixel(cols * CELL_W, rows.len() as u32 * CELL_H, Rgb(DEFAULT_BG));
    for (y, row) in rows.iter().enumerate() {
        for (x, cell) in row.iter().enumerate() {
            draw(&mut img, x as u32 * CELL_W, y as u32 * CELL_H, *cell);
        }
    }
    img.save(&out).expect("write the PNG");
    eprintln!("wrote {out} ({}×{})", img.width(), img.height());
}
