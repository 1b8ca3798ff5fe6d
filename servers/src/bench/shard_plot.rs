//! SVG plots of a `p2pmodel bench shard --sweep`: server egress per client and Game tick p99
//! against the client count, P2P on vs off (plotters, SVG backend: no fonts or C libraries).

use std::path::Path;

use plotters::prelude::*;

use super::shard_result::{PhaseResult, Row};

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn series(rows: &[(u32, Row)], on: bool, f: impl Fn(u32, &PhaseResult) -> Option<f64>) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|(n, (off_r, on_r))| {
            let r = if on { on_r.as_ref() } else { off_r.as_ref() }?;
            f(*n, r).filter(|v| v.is_finite()).map(|v| (f64::from(*n), v))
        })
        .collect()
}

fn chart(
    path: &Path,
    title: &str,
    y_label: &str,
    lines: &[Series<'_>],
    limit: Option<(f64, &str)>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let pts = lines.iter().flat_map(|l| l.2.iter());
    let x_max = pts.clone().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = pts.map(|p| p.1).chain(limit.map(|l| l.0)).fold(1e-9, f64::max) * 1.15;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    c.configure_mesh().x_desc("clients").y_desc(y_label).draw().map_err(|e| err(&e))?;
    for (name, color, data) in lines {
        let color = *color;
        c.draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        c.draw_series(data.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(|e| err(&e))?;
    }
    if let Some((l, label)) = limit {
        c.draw_series(LineSeries::new(vec![(0.0, l), (x_max, l)], RGBColor(150, 150, 150).stroke_width(1)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(150, 150, 150)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Write `shard-egress-per-client.svg`, `shard-tick-p99.svg`, `shard-tick-hz.svg` and
/// `shard-cpu-per-client.svg` into `dir`.
pub fn write_plots(dir: &Path, rows: &[(u32, Row)]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (red, blue) = (RGBColor(200, 40, 40), RGBColor(30, 90, 200));
    let egress = |n: u32, r: &PhaseResult| Some(r.egress_bps / f64::from(n.max(1)) / 1e3);
    chart(
        &dir.join("shard-egress-per-client.svg"),
        "Shard egress per client (Agent + relay)",
        "kB/s per client",
        &[
            ("P2P off (state via Game server)", red, series(rows, false, egress)),
            ("P2P on (state over the mesh)", blue, series(rows, true, egress)),
        ],
        None,
    )?;
    let tick = |_: u32, r: &PhaseResult| r.tick_p99_ms;
    chart(
        &dir.join("shard-tick-p99.svg"),
        "Game tick time p99",
        "ms",
        &[("P2P off", red, series(rows, false, tick)), ("P2P on", blue, series(rows, true, tick))],
        Some((50.0, "goal 50 ms")),
    )?;
    let hz = |_: u32, r: &PhaseResult| Some(r.tick_hz());
    chart(
        &dir.join("shard-tick-hz.svg"),
        "Game ticks achieved per second",
        "Hz",
        &[("P2P off", red, series(rows, false, hz)), ("P2P on", blue, series(rows, true, hz))],
        Some((20.0, "goal 20 Hz")),
    )?;
    let cpu = |_: u32, r: &PhaseResult| Some(r.cpu_us_per_client_s()).filter(|v| v.is_finite());
    chart(
        &dir.join("shard-cpu-per-client.svg"),
        "Shard CPU per client (frame + Agent I/O + relay + login)",
        "µs of CPU per client-second",
        &[("P2P off", red, series(rows, false, cpu)), ("P2P on", blue, series(rows, true, cpu))],
        None,
    )
}
