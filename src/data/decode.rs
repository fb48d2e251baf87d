//! Image files to 8-bit RGB: JPEG (libjpeg-turbo with the default
//! `turbojpeg` feature, zune-jpeg for CMYK and YCCK and without the feature)
//! and PNG (the png crate: grey, grey+alpha, palette, RGB, RGBA, 8 or 16
//! bits). Anything else, or a damaged file, is an error naming why.

#[cfg(feature = "turbojpeg")]
mod turbo;

use std::io::Cursor;
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Grey values repeated to three channels.
    pub fn from_grey(width: usize, height: usize, grey: &[u8]) -> RgbImage {
        RgbImage {
            width,
            height,
            pixels: grey.iter().flat_map(|&g| [g, g, g]).collect(),
        }
    }
}

/// Larger images than this many pixels are refused (a decompression bomb guard).
pub const MAX_PIXELS: usize = 100_000_000;

/// Decodes a JPEG or PNG file's bytes, telling them apart by content.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, String> {
    decode_at_least(bytes, usize::MAX)
}

/// Decodes like [`decode`], a JPEG at the smallest of the DCT-domain scales
/// 1/8, 1/4 and 1/2 whose shorter side is still at least `side` pixels (at
/// full size when none is).
pub fn decode_at_least(bytes: &[u8], side: usize) -> Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    if bytes.starts_with(&[0xff, 0xd8]) {
        decode_jpeg(bytes, side)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes)
    } else {
        Err("neither JPEG nor PNG".into())
    }
}

/// A rectangle of an image: `width × height` pixels from column `x`, row `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Part of an image, decoded: `image` holds the pixels of the rectangle
/// whose top left corner is (`x`, `y`) in the whole image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub x: usize,
    pub y: usize,
    pub image: RgbImage,
}

/// Decodes a JPEG or PNG file's bytes, at least `region` of them (which must lie
/// inside the image), pixel for pixel as [`decode`] gives it there: with
/// libjpeg-turbo only the rows and iMCU columns around the region, saving
/// the IDCT, upsampling and colour conversion of the rest; else the whole
/// image.
pub fn decode_region(bytes: &[u8], region: Region) -> Result<Decoded, String> {
    #[cfg(feature = "turbojpeg")]
    if bytes.starts_with(&[0xff, 0xd8])
        && let Some(decoded) = with_turbo(bytes, |d, header| {
            let Some(area) = decodable(header, 1, region) else {
                return d
                    .decode(bytes, header, 1, None)
                    .map(|image| Decoded { x: 0, y: 0, image });
            };
            if area.y + area.height < header.height {
                ends_whole(bytes)?;
            }
            let image = d.decode(bytes, header, 1, Some(area))?;
            Ok(Decoded {
                x: area.x,
                y: area.y,
                image,
            })
        })?
    {
        return Ok(decoded);
    }
    #[cfg(not(feature = "turbojpeg"))]
    let _ = region;
    decode(bytes).map(|image| Decoded { x: 0, y: 0, image })
}

/// What a thread decodes with, kept from one image to the next so that an
/// image costs no allocation: the file's bytes and the decoded pixels.
#[derive(Debug, Default)]
pub struct Buffers {
    pub file: Vec<u8>,
    pub pixels: Vec<u8>,
}

/// An image decoded into a buffer kept from image to image: `width ×
/// height` RGB pixels, of which only those in `valid` were decoded from
/// this image (the rest are left from earlier ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub valid: Region,
}

/// Decodes like [`decode_at_least`] into `pixels` (its length set to the
/// whole image's), but only the part of it that `needed` asks for, given the
/// size the image decodes at: with libjpeg-turbo the rows and iMCU columns
/// around that part, pixel for pixel as the whole decode has them there
/// (the rows below it are not even entropy-decoded); else the whole image.
pub fn decode_within(
    bytes: &[u8],
    side: usize,
    needed: &dyn Fn(usize, usize) -> Region,
    pixels: &mut Vec<u8>,
) -> Result<Canvas, String> {
    #[cfg(feature = "turbojpeg")]
    if bytes.starts_with(&[0xff, 0xd8])
        && let Some(canvas) = with_turbo(bytes, |d, header| {
            let denom = dct_denominator(header, side);
            let (width, height) = (header.width.div_ceil(denom), header.height.div_ceil(denom));
            if width * height > MAX_PIXELS {
                return Err(format!("JPEG of {width}×{height} is too large"));
            }
            let whole = Region {
                x: 0,
                y: 0,
                width,
                height,
            };
            let area = decodable(header, denom, needed(width, height)).unwrap_or(whole);
            if area.y + area.height < height {
                ends_whole(bytes)?;
            }
            pixels.resize(width * height * 3, 0);
            let first = (area.y * width + area.x) * 3;
            d.decode_into(bytes, header, denom, area, &mut pixels[first..], width * 3)?;
            Ok(Canvas {
                width,
                height,
                valid: area,
            })
        })?
    {
        return Ok(canvas);
    }
    let _ = needed;
    let image = decode_at_least(bytes, side)?;
    *pixels = image.pixels;
    Ok(Canvas {
        width: image.width,
        height: image.height,
        valid: Region {
            x: 0,
            y: 0,
            width: image.width,
            height: image.height,
        },
    })
}

/// The part of an image (scaled by 1/`denom`) that libjpeg-turbo decodes to
/// give `region` exactly as a whole decode does: its left edge moved to an
/// iMCU boundary and both edges two pixels out, since chroma upsampling
/// reads a sample either side; none where the region does not lie inside
/// the image or the image cannot be cropped (lossless, an unusual
/// subsampling).
#[cfg(feature = "turbojpeg")]
fn decodable(header: &turbo::Header, denom: usize, region: Region) -> Option<Region> {
    let (width, height) = (header.width.div_ceil(denom), header.height.div_ceil(denom));
    let inside = region.width > 0
        && region.height > 0
        && region.x + region.width <= width
        && region.y + region.height <= height;
    let mcu = header.mcu_width.filter(|_| inside && !header.lossless)?;
    let mcu = mcu.div_ceil(denom);
    let x = region.x.saturating_sub(2) / mcu * mcu;
    let right = (region.x + region.width + 2).min(width);
    Some(Region {
        x,
        y: region.y,
        width: right - x,
        height: region.height,
    })
}

/// An error for a JPEG without an end-of-image marker after its last scan
/// (a truncated file), checked where a decode leaves out the image's last
/// rows, which libjpeg-turbo then does not read: a file cut short is
/// damaged whatever part of it an image needs.
#[cfg(feature = "turbojpeg")]
fn ends_whole(bytes: &[u8]) -> Result<(), String> {
    // Inside a scan a 0xff byte is never followed by 0xd9: the last such
    // pair of a whole file is its end of image, with no scan after it.
    let end = bytes.windows(2).rposition(|m| m == [0xff, 0xd9]);
    if end.is_some_and(|at| !bytes[at..].windows(2).any(|m| m == [0xff, 0xda])) {
        return Ok(());
    }
    Err("JPEG: no end-of-image marker after the last scan (truncated?)".into())
}

/// The largest of the DCT-domain scale denominators 8, 4 and 2 at which
/// the image's shorter side is still at least `side` pixels (1 where none is).
#[cfg(feature = "turbojpeg")]
fn dct_denominator(header: &turbo::Header, side: usize) -> usize {
    let shorter = header.width.min(header.height);
    [8, 4, 2]
        .into_iter()
        .find(|denom| !header.lossless && shorter.div_ceil(*denom) >= side)
        .unwrap_or(1)
}

/// JPEG through libjpeg-turbo, falling back to zune-jpeg for what it does
/// not convert to RGB itself (CMYK and YCCK).
#[cfg(feature = "turbojpeg")]
fn decode_jpeg(bytes: &[u8], side: usize) -> Result<RgbImage, String> {
    let decoded = with_turbo(bytes, |d, header| {
        d.decode(bytes, header, dct_denominator(header, side), None)
    })?;
    match decoded {
        Some(image) => Ok(image),
        None => decode_jpeg_zune(bytes),
    }
}

/// `decode` with this thread's libjpeg-turbo decompressor and the header of
/// `bytes`; `None` for what libjpeg-turbo leaves to zune-jpeg (a header it
/// cannot read, CMYK and YCCK). A file libjpeg-turbo decodes only with a
/// warning (a truncated or corrupt one) is an error: its pixels are partly
/// made up.
#[cfg(feature = "turbojpeg")]
fn with_turbo<T>(
    bytes: &[u8],
    decode: impl FnOnce(&mut turbo::Turbo, &turbo::Header) -> Result<T, String>,
) -> Result<Option<T>, String> {
    use std::cell::RefCell;
    use turbo::Turbo;
    thread_local! {
        static DECOMPRESSOR: RefCell<Option<Turbo>> = const { RefCell::new(None) };
    }
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let d = match slot {
            Some(d) => d,
            None => slot.insert(Turbo::new()?),
        };
        let decoded = match d.header(bytes) {
            Ok(header) if !header.four_channels => decode(d, &header).map(Some),
            _ => Ok(None),
        };
        // A decompressor that failed, or refused a file, may keep state from
        // it, and which thread decodes which file depends on timing: the
        // next file gets a fresh one, so that every decode is the same
        // whatever the thread decoded before.
        if !matches!(decoded, Ok(Some(_))) {
            *slot = None;
        }
        decoded
    })
}

#[cfg(not(feature = "turbojpeg"))]
fn decode_jpeg(bytes: &[u8], _side: usize) -> Result<RgbImage, String> {
    decode_jpeg_zune(bytes)
}

fn decode_jpeg_zune(bytes: &[u8]) -> Result<RgbImage, String> {
    // Strict: a truncated or corrupt file is an error, not padded with grey.
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(1 << 15)
        .set_max_height(1 << 15);
    let mut decoder = JpegDecoder::new_with_options(Cursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| format!("JPEG: {e:?}"))?;
    // zune-jpeg fills a last row whose data is cut off with grey even in
    // strict mode; such a file lacks the end-of-image marker after its last
    // scan (inside a scan a 0xff byte is never followed by 0xd9).
    let last_scan = bytes.windows(2).rposition(|m| m == [0xff, 0xda]);
    if !last_scan.is_some_and(|at| bytes[at..].windows(2).any(|m| m == [0xff, 0xd9])) {
        return Err("JPEG: no end-of-image marker after the last scan (truncated?)".into());
    }
    let (width, height) = decoder.dimensions().ok_or("JPEG: no dimensions")?;
    if width * height > MAX_PIXELS {
        return Err(format!("JPEG of {width}×{height} is too large"));
    }
    let pixels = decoder.decode().map_err(|e| format!("JPEG: {e:?}"))?;
    if pixels.len() != width * height * 3 {
        return Err(format!(
            "JPEG: {} bytes decoded for {width}×{height}",
            pixels.len()
        ));
    }
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // Palette to RGB(A), 16 bits to 8, grey below 8 bits to 8.
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| format!("PNG: {e}"))?;
    let (width, height) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    if width * height > MAX_PIXELS {
        return Err(format!("PNG of {width}×{height} is too large"));
    }
    let size = reader.output_buffer_size().ok_or("PNG: size overflows")?;
    let mut buf = vec![0; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("PNG: {e}"))?;
    let data = &buf[..frame.buffer_size()];
    let pixels: Vec<u8> = match frame.color_type {
        png::ColorType::Rgb => data.to_vec(),
        png::ColorType::Rgba => data
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => data.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => data
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        png::ColorType::Indexed => return Err("PNG: palette not expanded".into()),
    };
    if pixels.len() != width * height * 3 {
        return Err(format!(
            "PNG: {} bytes decoded for {width}×{height}",
            pixels.len()
        ));
    }
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A JPEG of `width × height` in `color` (1 grey, 3 RGB, 4 CMYK channels).
    pub fn jpeg(width: u16, height: u16, color: jpeg_encoder::ColorType) -> Vec<u8> {
        let channels = match color {
            jpeg_encoder::ColorType::Luma => 1,
            jpeg_encoder::ColorType::Cmyk => 4,
            _ => 3,
        };
        let data: Vec<u8> = (0..width as usize * height as usize * channels)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&data, width, height, color)
            .unwrap();
        out
    }

    /// A PNG of `width × height` with the given colour type and depth.
    pub fn png(width: u32, height: u32, color: png::ColorType, depth: png::BitDepth) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        let samples = match color {
            png::ColorType::Grayscale | png::ColorType::Indexed => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
        };
        if color == png::ColorType::Indexed {
            encoder.set_palette(vec![0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]);
        }
        let bytes_per_sample = if depth == png::BitDepth::Sixteen {
            2
        } else {
            1
        };
        let data: Vec<u8> = (0..(width * height) as usize * samples * bytes_per_sample)
            .map(|i| {
                if color == png::ColorType::Indexed {
                    (i % 4) as u8
                } else {
                    (i * 13 % 256) as u8
                }
            })
            .collect();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&data).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn jpeg_in_grey_rgb_and_cmyk_comes_out_rgb() {
        for color in [
            jpeg_encoder::ColorType::Luma,
            jpeg_encoder::ColorType::Rgb,
            jpeg_encoder::ColorType::Cmyk,
        ] {
            let image = decode(&jpeg(37, 21, color)).unwrap_or_else(|e| panic!("{color:?}: {e}"));
            assert_eq!(
                (image.width, image.height, image.pixels.len()),
                (37, 21, 37 * 21 * 3)
            );
        }
        // Grey repeats to three equal channels.
        let grey = decode(&jpeg(8, 8, jpeg_encoder::ColorType::Luma)).unwrap();
        assert!(grey.pixels.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn png_of_every_colour_type_and_16_bits_comes_out_rgb() {
        use png::{BitDepth, ColorType};
        for (color, depth) in [
            (ColorType::Rgb, BitDepth::Eight),
            (ColorType::Rgba, BitDepth::Eight),
            (ColorType::Grayscale, BitDepth::Eight),
            (ColorType::GrayscaleAlpha, BitDepth::Eight),
            (ColorType::Indexed, BitDepth::Eight),
            (ColorType::Rgb, BitDepth::Sixteen),
            (ColorType::Grayscale, BitDepth::Sixteen),
        ] {
            let image = decode(&png(9, 5, color, depth))
                .unwrap_or_else(|e| panic!("{color:?} {depth:?}: {e}"));
            assert_eq!(
                (image.width, image.height, image.pixels.len()),
                (9, 5, 135),
                "{color:?} {depth:?}"
            );
        }
        let palette = decode(&png(4, 1, ColorType::Indexed, BitDepth::Eight)).unwrap();
        assert_eq!(
            palette.pixels,
            vec![0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]
        );
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let good = jpeg(64, 48, jpeg_encoder::ColorType::Rgb);
        assert!(decode(&[]).unwrap_err().contains("empty"));
        assert!(decode(b"GIF89a").unwrap_err().contains("neither"));
        let damaged = |bytes: &[u8], what: &str| match decode(bytes) {
            Ok(image) => panic!("{what} decodes as {}×{}", image.width, image.height),
            Err(e) => assert!(e.starts_with("JPEG: "), "{what}: {e}"),
        };
        for cut in [2, 20, good.len() / 3, good.len() - 10] {
            damaged(&good[..cut], &format!("the first {cut} bytes of a JPEG"));
        }
        let mut garbled = good.clone();
        for b in garbled.iter_mut().skip(200).step_by(7) {
            *b ^= 0x5a;
        }
        damaged(&garbled, "a garbled JPEG");
        // CMYK goes to zune-jpeg whatever the features.
        let cmyk = jpeg(64, 48, jpeg_encoder::ColorType::Cmyk);
        assert!(decode(&cmyk).is_ok());
        for cut in [cmyk.len() / 3, cmyk.len() - 10] {
            damaged(
                &cmyk[..cut],
                &format!("the first {cut} bytes of a CMYK JPEG"),
            );
        }
        let p = png(16, 16, png::ColorType::Rgb, png::BitDepth::Eight);
        assert!(decode(&p[..p.len() / 2]).is_err());
    }

    #[cfg(feature = "turbojpeg")]
    #[test]
    fn a_truncated_jpeg_is_damaged_not_padded() {
        let good = jpeg(64, 48, jpeg_encoder::ColorType::Rgb);
        assert!(decode(&good).is_ok());
        let e = decode(&good[..good.len() * 2 / 3]).unwrap_err();
        assert!(e.starts_with("JPEG: "), "{e}");
    }

    /// A JPEG of sharp-edged colour blocks (where chroma upsampling needs
    /// its neighbours), subsampled as `sampling` says.
    fn blocks(width: u16, height: u16, sampling: jpeg_encoder::SamplingFactor) -> Vec<u8> {
        let data: Vec<u8> = (0..height as usize)
            .flat_map(|y| {
                (0..width as usize).flat_map(move |x| {
                    let cell = (x / 5 + 3 * (y / 7)) % 6;
                    [
                        [250, 10, 10],
                        [10, 240, 20],
                        [20, 20, 250],
                        [240, 240, 0],
                        [0, 0, 0],
                        [255; 3],
                    ][cell]
                })
            })
            .collect();
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
        encoder.set_sampling_factor(sampling);
        encoder
            .encode(&data, width, height, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    #[test]
    fn a_region_decodes_pixel_for_pixel_as_the_whole_image_has_it() {
        use jpeg_encoder::SamplingFactor;
        for sampling in [
            SamplingFactor::R_4_2_0,
            SamplingFactor::R_4_4_4,
            SamplingFactor::R_4_2_2,
        ] {
            let bytes = blocks(256, 256, sampling);
            let whole = decode(&bytes).unwrap();
            for (x, y, side) in (0..=29).map(|x| (x, (x * 7) % 30, 227)).chain([
                (0, 0, 256),
                (240, 240, 16),
                (17, 1, 200),
            ]) {
                let region = Region {
                    x,
                    y,
                    width: side,
                    height: side,
                };
                let part = decode_region(&bytes, region).unwrap();
                assert!(part.x <= x && part.y <= y, "{sampling:?} ({x}, {y})");
                assert!(
                    part.x + part.image.width >= x + side && part.y + part.image.height >= y + side
                );
                for row in 0..side {
                    let at = |image: &RgbImage, px: usize, py: usize| {
                        let start = (py * image.width + px) * 3;
                        image.pixels[start..start + side * 3].to_vec()
                    };
                    assert_eq!(
                        at(&part.image, x - part.x, y + row - part.y),
                        at(&whole, x, y + row),
                        "{sampling:?} region at ({x}, {y}), row {row}"
                    );
                }
            }
        }
        // A region outside the image gets the whole image.
        let bytes = blocks(40, 30, SamplingFactor::R_4_2_0);
        let part = decode_region(
            &bytes,
            Region {
                x: 30,
                y: 0,
                width: 20,
                height: 5,
            },
        )
        .unwrap();
        assert_eq!(
            (part.x, part.y, part.image),
            (0, 0, decode(&bytes).unwrap())
        );
    }

    #[cfg(feature = "turbojpeg")]
    #[test]
    fn large_jpegs_decode_scaled_in_the_dct_domain_no_smaller_than_asked() {
        let big = jpeg(200, 130, jpeg_encoder::ColorType::Rgb);
        for (side, want) in [
            (16, (25, 17)),
            (17, (25, 17)),
            (18, (50, 33)),
            (65, (100, 65)),
            (66, (200, 130)),
        ] {
            let image = decode_at_least(&big, side).unwrap();
            assert_eq!((image.width, image.height), want, "at least {side}");
            assert_eq!(image.pixels.len(), want.0 * want.1 * 3);
        }
        // Half size: each pixel near the mean of its 2×2 block at full size.
        let full = decode(&big).unwrap();
        let half = decode_at_least(&big, 65).unwrap();
        let mut err = 0.0;
        for y in 0..65 {
            for x in 0..100 {
                for c in 0..3 {
                    let at = |xx: usize, yy: usize| f64::from(full.pixels[(yy * 200 + xx) * 3 + c]);
                    let mean = (at(2 * x, 2 * y)
                        + at(2 * x + 1, 2 * y)
                        + at(2 * x, 2 * y + 1)
                        + at(2 * x + 1, 2 * y + 1))
                        / 4.0;
                    err += (f64::from(half.pixels[(y * 100 + x) * 3 + c]) - mean).abs();
                }
            }
        }
        assert!(err / (65.0 * 100.0 * 3.0) < 20.0, "mean error {err}");
    }
}
