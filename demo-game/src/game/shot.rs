//! `--screenshot FILE --exit-after N`: when the run's time is up (and at least
//! [`MIN_FRAMES`] frames were drawn: software rendering's first frames are black while
//! pipelines compile), capture the window with Bevy's screenshot API, check its pixels,
//! save it as PNG and exit. A shot that is blank or lacks the mesh lines' or the overlay's
//! colours fails the run (exit code 1); the PNG is saved either way, for a look.

use std::path::PathBuf;

use bevy::diagnostic::{DiagnosticsStore, FrameTimeDiagnosticsPlugin};
use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured, save_to_disk};

use crate::net::{NetSystems, RunClock};

/// Frames drawn before a capture is taken.
pub const MIN_FRAMES: u32 = 60;

/// The screenshot step.
pub struct ScreenshotPlugin {
    /// Where to save the PNG.
    pub path: PathBuf,
}

/// The check's verdict, once the capture arrived.
#[derive(Resource, Default, Debug, Clone)]
pub struct ShotResult(pub Option<Result<ShotSummary, String>>);

#[derive(Resource)]
struct ShotPlan {
    path: PathBuf,
    frames: u32,
    requested: bool,
}

impl Plugin for ScreenshotPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(ShotPlan { path: self.path.clone(), frames: 0, requested: false })
            .init_resource::<ShotResult>()
            .add_systems(Update, take_and_exit.after(NetSystems));
    }
}

fn take_and_exit(
    mut commands: Commands,
    mut plan: ResMut<ShotPlan>,
    clock: Res<RunClock>,
    result: Res<ShotResult>,
    diagnostics: Res<DiagnosticsStore>,
    mut exit: MessageWriter<AppExit>,
) {
    plan.frames += 1;
    if let Some(r) = &result.0 {
        match r {
            Ok(s) => info!(path = %plan.path.display(), ?s, "screenshot saved and checked"),
            Err(e) => error!(path = %plan.path.display(), "screenshot check failed: {e}"),
        }
        exit.write(if r.is_ok() { AppExit::Success } else { AppExit::error() });
        return;
    }
    if plan.requested || !clock.done || plan.frames < MIN_FRAMES {
        return;
    }
    plan.requested = true;
    let fps = diagnostics.get(&FrameTimeDiagnosticsPlugin::FPS).and_then(|d| d.smoothed()).unwrap_or(0.0);
    info!(frames = plan.frames, fps = format!("{fps:.1}"), "taking the screenshot");
    commands.spawn(Screenshot::primary_window()).observe(save_to_disk(plan.path.clone())).observe(
        |captured: On<ScreenshotCaptured>, mut result: ResMut<ShotResult>| {
            let verdict = match captured.image.clone().try_into_dynamic() {
                Ok(img) => {
                    let rgb = img.to_rgb8();
                    check_pixels(rgb.as_raw(), rgb.width(), rgb.height())
                }
                Err(e) => Err(format!("cannot read the captured image: {e}")),
            };
            result.0 = Some(verdict);
        },
    );
}

/// What the pixel check counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShotSummary {
    /// Pixels that differ from the background.
    pub drawn: usize,
    /// Pixels in a direct link's green.
    pub green: usize,
    /// Pixels in a relayed link's orange.
    pub orange: usize,
    /// Near-white pixels (overlay and panel text) in the top rows.
    pub text: usize,
}

/// Pixel classes: close to the clear colour, the direct green, the relayed orange, white.
fn classify(p: [u8; 3]) -> (bool, bool, bool, bool) {
    let [r, g, b] = p.map(i32::from);
    let background = (r - 18).abs() < 14 && (g - 20).abs() < 14 && (b - 28).abs() < 16;
    let green = g > 140 && g - r > 70 && g - b > 60;
    let orange = r > 170 && (60..200).contains(&g) && b < 90 && r - g > 50;
    let white = r > 200 && g > 200 && b > 200;
    (background, green, orange, white)
}

/// Check a capture (RGB8, rows top to bottom): not blank, mesh lines in a path colour
/// (direct green or relayed orange), overlay text in the top quarter.
pub fn check_pixels(rgb: &[u8], width: u32, height: u32) -> Result<ShotSummary, String> {
    let (w, h) = (width as usize, height as usize);
    if rgb.len() != w * h * 3 || w == 0 || h == 0 {
        return Err(format!("{}x{} image with {} bytes", width, height, rgb.len()));
    }
    let mut s = ShotSummary::default();
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        let (bg, green, orange, white) = classify([px[0], px[1], px[2]]);
        s.drawn += usize::from(!bg);
        s.green += usize::from(green);
        s.orange += usize::from(orange);
        s.text += usize::from(white && i / w < h / 4);
    }
    let total = w * h;
    if s.drawn * 100 < total {
        return Err(format!("blank: only {} of {total} pixels differ from the background ({s:?})", s.drawn));
    }
    if s.green + s.orange < 40 {
        return Err(format!("no mesh lines: {} green and {} orange pixels ({s:?})", s.green, s.orange));
    }
    if s.text < 40 {
        return Err(format!("no overlay text: {} white pixels in the top quarter ({s:?})", s.text));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, fill: [u8; 3]) -> Vec<u8> {
        fill.iter().copied().cycle().take(w * h * 3).collect()
    }

    fn paint(
        img: &mut [u8],
        w: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        c: [u8; 3],
    ) {
        for y in rows {
            for x in cols.clone() {
                img[(y * w + x) * 3..][..3].copy_from_slice(&c);
            }
        }
    }

    #[test]
    fn a_background_only_or_black_capture_fails() {
        let bg = [18, 20, 28];
        assert!(check_pixels(&image(100, 100, bg), 100, 100).unwrap_err().contains("blank"));
        let black = check_pixels(&image(100, 100, [0, 0, 0]), 100, 100).unwrap_err();
        assert!(black.contains("no mesh lines"), "{black}");
    }

    #[test]
    fn lines_and_text_pass() {
        let mut img = image(100, 100, [18, 20, 28]);
        paint(&mut img, 100, 50..53, 0..100, [38, 230, 77]); // a green line
        paint(&mut img, 100, 2..6, 2..30, [255, 255, 255]); // overlay text
        let s = check_pixels(&img, 100, 100).unwrap();
        assert_eq!(s.green, 300);
        assert_eq!(s.text, 112);
        // Without the text it fails, naming the overlay.
        let mut no_text = image(100, 100, [18, 20, 28]);
        paint(&mut no_text, 100, 50..53, 0..100, [255, 140, 13]);
        assert!(check_pixels(&no_text, 100, 100).unwrap_err().contains("overlay"));
    }

    #[test]
    fn a_wrong_size_is_an_error() {
        assert!(check_pixels(&[0; 10], 2, 2).is_err());
    }
}
