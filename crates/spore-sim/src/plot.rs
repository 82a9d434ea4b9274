//! Charts rendered to standalone SVG documents with [`plotters`].
//!
//! A [`Chart`] is plain data — a title, axis labels, a [`ChartKind`] and some named
//! [`Series`] of `(x, y)` points — and [`render_svg`] turns it into an 800×480 SVG document
//! with a white background, one colour per series and a legend when there is more than one
//! series. Text is emitted as SVG `<text>` elements (no fonts are embedded), so the viewer
//! picks the actual `sans-serif` face.
//!
//! Rendering never panics on odd data: points with a NaN or infinite coordinate are skipped,
//! a single point or all-equal values get a padded axis range, and a chart with nothing to
//! draw is a [`PlotError::Empty`].
//!
//! ```
//! use spore_sim::plot::{Chart, ChartKind, Series, render_svg};
//!
//! # fn main() -> Result<(), spore_sim::plot::PlotError> {
//! let chart = Chart {
//!     title: "RTT".into(),
//!     x_label: "time (s)".into(),
//!     y_label: "ms".into(),
//!     kind: ChartKind::Line,
//!     series: vec![Series { name: "a → b".into(), points: vec![(0.0, 40.0), (1.0, 42.0)] }],
//!     y_range: None,
//! };
//! let svg = render_svg(&chart)?;
//! assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
//! # Ok(())
//! # }
//! ```

use plotters::coord::Shift;
use plotters::coord::ranged1d::Ranged;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::{
    BLACK, ChartBuilder, Circle, Color, DrawingArea, HSLColor, IntoDrawingArea, PathElement,
    RGBAColor, RGBColor, Rectangle, SVGBackend, SeriesLabelPosition, WHITE,
};

/// A data point, `(x, y)`.
type Point = (f64, f64);

/// Width of the rendered SVG document, in pixels.
const WIDTH: u32 = 800;
/// Height of the rendered SVG document, in pixels.
const HEIGHT: u32 = 480;

/// The number of labelled ticks plotters aims for on the x axis.
const X_TICKS: usize = 10;
/// The number of labelled ticks plotters aims for on the y axis.
const Y_TICKS: usize = 8;

/// Relative headroom added to a data-derived y range.
const HEADROOM: f64 = 0.05;
/// Relative margin added on both sides of a line chart's x range.
const X_MARGIN: f64 = 0.02;
/// A range narrower than this (absolute) is treated as a single value and padded; plotters'
/// tick computation breaks down on spans close to the smallest floats.
const MIN_SPAN: f64 = 1e-200;
/// Axis bounds beyond this magnitude are rejected; plotters' tick computation overflows near
/// `f64::MAX`.
const MAX_BOUND: f64 = 1e300;

/// One named line (or set of bars) of a chart.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Series {
    /// The name shown in the legend.
    pub name: String,
    /// The `(x, y)` points, in drawing order. Points with a NaN or infinite coordinate are
    /// skipped when rendering.
    pub points: Vec<(f64, f64)>,
}

/// How a chart draws its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ChartKind {
    /// Each series is a polyline through its points, in order, with a small marker per point.
    Line,
    /// Each point is a vertical bar from 0 to `y`, centred on `x` (for histograms). Several
    /// series are drawn side by side within each x slot.
    Bars,
}

/// A chart: what [`render_svg`] draws.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Chart {
    /// The caption above the plot.
    pub title: String,
    /// The description of the x axis.
    pub x_label: String,
    /// The description of the y axis.
    pub y_label: String,
    /// Lines or bars.
    pub kind: ChartKind,
    /// The series, each drawn in its own colour.
    pub series: Vec<Series>,
    /// Fixed y range; None = from the data (0 at the bottom when all y >= 0, with 5 % headroom).
    ///
    /// Parts of the chart outside a fixed range are clipped.
    pub y_range: Option<(f64, f64)>,
}

/// Why a chart could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// No series has a single finite point to draw.
    #[error("chart {title:?} has no points")]
    Empty {
        /// The chart's title.
        title: String,
    },
    /// An axis range is not usable: not finite, reversed, or too large to lay out ticks.
    #[error("chart {title:?} has an invalid {axis} range {low}..{high}")]
    InvalidRange {
        /// The chart's title.
        title: String,
        /// `"x"` or `"y"`.
        axis: &'static str,
        /// The low end of the range.
        low: f64,
        /// The high end of the range.
        high: f64,
    },
    /// plotters failed to draw.
    #[error("drawing chart failed: {0}")]
    Drawing(String),
}

/// Renders `chart` to a standalone SVG document (800x480): white background, distinct colours
/// per series, and a legend when there is more than one series.
///
/// The document starts with `<svg` (there is no `<?xml …?>` prolog) and all text is
/// XML-escaped. Points with a NaN or infinite coordinate are skipped; a series left without
/// points still gets a legend entry.
///
/// # Errors
///
/// [`PlotError::Empty`] when there is no finite point at all, [`PlotError::InvalidRange`]
/// when [`Chart::y_range`] is not finite or reversed or the data's range overflows, and
/// [`PlotError::Drawing`] if plotters reports an error.
pub fn render_svg(chart: &Chart) -> Result<String, PlotError> {
    let series: Vec<Vec<(f64, f64)>> = chart
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect()
        })
        .collect();

    let mut points = series.iter().flatten();
    let Some(&(x0, y0)) = points.next() else {
        return Err(PlotError::Empty {
            title: chart.title.clone(),
        });
    };
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (x0, x0, y0, y0);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }

    let (x_range, bar_slot) = match chart.kind {
        ChartKind::Line => (line_x_range(x_min, x_max), 0.0),
        ChartKind::Bars => bar_x_range(&series, x_min, x_max),
    };
    let y_range = match chart.y_range {
        Some((low, high)) => {
            if !(low.is_finite() && high.is_finite() && low <= high) {
                return Err(invalid_range(chart, "y", (low, high)));
            }
            pad_degenerate(low, high)
        }
        None => data_y_range(y_min, y_max),
    };
    let x_range = checked_range(chart, "x", x_range)?;
    let y_range = checked_range(chart, "y", y_range)?;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, chart, &series, x_range, y_range, bar_slot)?;
        // Closes the open tags (`</svg>`); dropping the backend would too, but would swallow
        // errors.
        root.present().map_err(drawing_error)?;
    }
    Ok(svg)
}

/// Draws the whole chart on `root`, whose ranges have been checked.
fn draw(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    chart: &Chart,
    series: &[Vec<(f64, f64)>],
    x: (f64, f64),
    y: (f64, f64),
    bar_slot: f64,
) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(drawing_error)?;

    let x_ticks = TickFormat::new(x);
    let y_ticks = TickFormat::new(y);
    let title = sanitize(&chart.title);
    let mut builder = ChartBuilder::on(root);
    builder
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(y_label_area(y, &y_ticks));
    if !title.trim().is_empty() {
        builder.caption(&title, ("sans-serif", 24));
    }
    let mut ctx = builder
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(drawing_error)?;

    let x_tick_label = |v: &f64| x_ticks.format(*v);
    let y_tick_label = |v: &f64| y_ticks.format(*v);
    let x_label = sanitize(&chart.x_label);
    let y_label = sanitize(&chart.y_label);
    let mut mesh = ctx.configure_mesh();
    mesh.x_labels(X_TICKS)
        .y_labels(Y_TICKS)
        .max_light_lines(4)
        .x_label_formatter(&x_tick_label)
        .y_label_formatter(&y_tick_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.12));
    if !x_label.trim().is_empty() {
        mesh.x_desc(x_label);
    }
    if !y_label.trim().is_empty() {
        mesh.y_desc(y_label);
    }
    mesh.draw().map_err(drawing_error)?;

    let inside = |&(px, py): &(f64, f64)| x.0 <= px && px <= x.1 && y.0 <= py && py <= y.1;
    let count = series.len();
    for (index, (points, spec)) in series.iter().zip(&chart.series).enumerate() {
        let color = series_color(index);
        let name = sanitize(&spec.name);
        match chart.kind {
            ChartKind::Line => {
                let stroke = color.stroke_width(2);
                ctx.draw_series(
                    clip_polyline(points, x, y)
                        .into_iter()
                        .map(|run| PathElement::new(run, stroke)),
                )
                .map_err(drawing_error)?
                .label(name)
                .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 20, ly)], stroke));
                ctx.draw_series(
                    points
                        .iter()
                        .filter(|p| inside(p))
                        .map(|&p| Circle::new(p, 3, color.filled())),
                )
                .map_err(drawing_error)?;
            }
            ChartKind::Bars => {
                // Each x slot holds one bar per series, side by side, filling 80 % of it.
                let group = bar_slot * 0.8;
                let width = group / count as f64;
                let offset = -group / 2.0 + index as f64 * width;
                let base = 0.0_f64.clamp(y.0, y.1);
                let fill = color.mix(0.85).filled();
                ctx.draw_series(points.iter().filter_map(|&(px, py)| {
                    let top = py.clamp(y.0, y.1);
                    if top == base {
                        return None;
                    }
                    let left = (px + offset).clamp(x.0, x.1);
                    let right = (px + offset + width).clamp(x.0, x.1);
                    Some(Rectangle::new([(left, base), (right, top)], fill))
                }))
                .map_err(drawing_error)?
                .label(name)
                .legend(move |(lx, ly)| Rectangle::new([(lx, ly - 5), (lx + 20, ly + 5)], fill));
            }
        }
    }

    if count > 1 {
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 14))
            // plotters sizes the box from a crude text-width estimate (0.7 em a byte) that
            // falls a little short of real sans-serif fonts for symbols and wide letters.
            .margin(14)
            .draw()
            .map_err(drawing_error)?;
    }
    Ok(())
}

/// The width of the y axis' label area: room for the longest tick label plotters will draw,
/// plus the axis description.
fn y_label_area(y: (f64, f64), ticks: &TickFormat) -> u32 {
    let longest = RangedCoordf64::from(y.0..y.1)
        .key_points(Y_TICKS)
        .into_iter()
        .map(|value| ticks.format(value).chars().count())
        .max()
        .unwrap_or(1);
    let chars = u32::try_from(longest).unwrap_or(u32::MAX).min(20);
    (chars * 8 + 40).clamp(56, 200)
}

/// The x range of a line chart: the data's, padded when degenerate, with a small margin.
fn line_x_range(min: f64, max: f64) -> (f64, f64) {
    let (low, high) = pad_degenerate(min, max);
    let margin = (high - low) * X_MARGIN;
    (low - margin, high + margin)
}

/// The x range of a bar chart and the width of one bar slot: the smallest gap between
/// distinct x values, so that neighbouring bars never overlap.
fn bar_x_range(series: &[Vec<(f64, f64)>], min: f64, max: f64) -> ((f64, f64), f64) {
    let mut xs: Vec<f64> = series.iter().flatten().map(|&(x, _)| x).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let tolerance = span_tolerance(min, max);
    let gap = xs
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .filter(|gap| *gap > tolerance)
        .fold(f64::INFINITY, f64::min);
    if gap.is_finite() {
        ((min - 0.6 * gap, max + 0.6 * gap), gap)
    } else {
        // One distinct x (or several indistinguishable ones): a bar in the middle of a range
        // a few bar widths wide.
        let centre = min / 2.0 + max / 2.0;
        let slot = unit_around(centre);
        ((centre - 3.0 * slot, centre + 3.0 * slot), slot)
    }
}

/// The y range derived from the data: from 0 when all y >= 0 (to 0 when all y <= 0),
/// with 5 % headroom away from 0.
fn data_y_range(min: f64, max: f64) -> (f64, f64) {
    if min >= 0.0 {
        let high = if max > MIN_SPAN { max } else { 1.0 };
        (0.0, high + high * HEADROOM)
    } else if max <= 0.0 {
        let low = if min < -MIN_SPAN { min } else { -1.0 };
        (low + low * HEADROOM, 0.0)
    } else {
        let (low, high) = pad_degenerate(min, max);
        let headroom = (high - low) * HEADROOM;
        (low - headroom, high + headroom)
    }
}

/// Widens a range too narrow for plotters to lay out (a single value, in effect) around its
/// centre.
fn pad_degenerate(low: f64, high: f64) -> (f64, f64) {
    if high - low > span_tolerance(low, high) {
        return (low, high);
    }
    let centre = low / 2.0 + high / 2.0;
    let unit = unit_around(centre);
    (centre - unit, centre + unit)
}

/// The span below which `low..high` counts as a single value.
fn span_tolerance(low: f64, high: f64) -> f64 {
    (low.abs().max(high.abs()) * 1e-9).max(MIN_SPAN)
}

/// Half the width of the padded range around the single value `centre`.
fn unit_around(centre: f64) -> f64 {
    if centre.abs() > 1e-100 {
        centre.abs() * 0.1
    } else {
        1.0
    }
}

/// Checks a final axis range: finite, increasing, not degenerate and not so large that
/// plotters' tick computation overflows.
fn checked_range(
    chart: &Chart,
    axis: &'static str,
    (low, high): (f64, f64),
) -> Result<(f64, f64), PlotError> {
    let usable = low.is_finite()
        && high.is_finite()
        && low.abs() <= MAX_BOUND
        && high.abs() <= MAX_BOUND
        && high - low > span_tolerance(low, high);
    if usable {
        Ok((low, high))
    } else {
        Err(invalid_range(chart, axis, (low, high)))
    }
}

/// A [`PlotError::InvalidRange`] for `chart`.
fn invalid_range(chart: &Chart, axis: &'static str, (low, high): (f64, f64)) -> PlotError {
    PlotError::InvalidRange {
        title: chart.title.clone(),
        axis,
        low,
        high,
    }
}

/// Converts a plotters error.
fn drawing_error(error: impl std::fmt::Display) -> PlotError {
    PlotError::Drawing(error.to_string())
}

/// The colour of series `index`: the ten "tab10" colours, then golden-ratio hues.
fn series_color(index: usize) -> RGBAColor {
    const PALETTE: [RGBColor; 10] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x7f, 0x7f, 0x7f),
        RGBColor(0xbc, 0xbd, 0x22),
        RGBColor(0x17, 0xbe, 0xcf),
    ];
    match PALETTE.get(index) {
        Some(color) => color.to_rgba(),
        None => {
            let hue = (index as f64 * 0.618_033_988_749_895).fract();
            HSLColor(hue, 0.65, 0.45).to_rgba()
        }
    }
}

/// Makes `text` safe for an XML document. plotters escapes `<`, `>`, `&` and quotes itself,
/// but passes control characters through, and most of them are not allowed in XML 1.0.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            c if c.is_control() => ' ',
            '\u{FFFE}' | '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// Splits the polyline through `points` into the runs visible within the `x` × `y`
/// rectangle, cutting segments at its edges.
fn clip_polyline(points: &[Point], x: (f64, f64), y: (f64, f64)) -> Vec<Vec<Point>> {
    let mut runs = Vec::new();
    let mut run: Vec<Point> = Vec::new();
    for pair in points.windows(2) {
        match clip_segment(pair[0], pair[1], x, y) {
            Some((start, end, start_clipped)) => {
                if start_clipped || run.is_empty() {
                    if run.len() > 1 {
                        runs.push(std::mem::take(&mut run));
                    }
                    run.clear();
                    run.push(start);
                }
                run.push(end);
            }
            None => {
                if run.len() > 1 {
                    runs.push(std::mem::take(&mut run));
                }
                run.clear();
            }
        }
    }
    if run.len() > 1 {
        runs.push(run);
    }
    runs
}

/// Liang–Barsky clipping of the segment `a`–`b` to the `x` × `y` rectangle: the visible part,
/// and whether its start was moved (so it does not continue the previous segment).
fn clip_segment(a: Point, b: Point, x: (f64, f64), y: (f64, f64)) -> Option<(Point, Point, bool)> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0_f64, 1.0_f64);
    for (p, q) in [
        (-dx, a.0 - x.0),
        (dx, x.1 - a.0),
        (-dy, a.1 - y.0),
        (dy, y.1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    if t0 > t1 || !t0.is_finite() || !t1.is_finite() {
        return None;
    }
    let at = |t: f64| {
        if t <= 0.0 {
            a
        } else if t >= 1.0 {
            b
        } else {
            (
                (a.0 + t * dx).clamp(x.0, x.1),
                (a.1 + t * dy).clamp(y.0, y.1),
            )
        }
    };
    Some((at(t0), at(t1), t0 > 0.0))
}

/// Formats tick labels for one axis: the shortest decimal (or, for very large or very small
/// magnitudes, scientific) form that is accurate to a millionth of the axis span, so that
/// floating-point noise such as `0.30000000000000004` does not show.
struct TickFormat {
    tolerance: f64,
    scientific: bool,
}

impl TickFormat {
    /// The format for an axis spanning `low..high`.
    fn new((low, high): (f64, f64)) -> Self {
        let magnitude = low.abs().max(high.abs());
        Self {
            tolerance: (high - low) * 1e-6,
            scientific: !(1e-3..1e6).contains(&magnitude),
        }
    }

    /// The label for the tick at `value`.
    fn format(&self, value: f64) -> String {
        if value.abs() <= self.tolerance {
            return "0".to_owned();
        }
        for digits in 0..=12 {
            let text = if self.scientific {
                format!("{value:.digits$e}")
            } else {
                format!("{value:.digits$}")
            };
            if text
                .parse::<f64>()
                .is_ok_and(|parsed| (parsed - value).abs() <= self.tolerance)
            {
                return text;
            }
        }
        if self.scientific {
            format!("{value:e}")
        } else {
            format!("{value}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_chart(series: Vec<Series>) -> Chart {
        Chart {
            title: "Round trips".to_owned(),
            x_label: "time (s)".to_owned(),
            y_label: "rtt (ms)".to_owned(),
            kind: ChartKind::Line,
            series,
            y_range: None,
        }
    }

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.to_owned(),
            points: points.to_vec(),
        }
    }

    /// A minimal well-formedness check: tags nest and balance, the document is one `<svg>`
    /// element, and text and attribute values contain only known entities.
    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("</svg>").count(), 1);
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        let mut closed_root = false;
        while let Some(open) = rest.find('<') {
            assert_entities(&rest[..open]);
            let close = rest[open..].find('>').expect("unterminated tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
            assert!(!closed_root, "content after </svg>: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
                closed_root = stack.is_empty();
            } else {
                assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
                assert_entities(tag);
                let name = tag
                    .split(|c: char| c.is_whitespace() || c == '/')
                    .next()
                    .expect("tag name");
                assert!(!name.is_empty(), "empty tag name");
                if !tag.ends_with('/') {
                    stack.push(name);
                }
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed tags: {stack:?}");
        assert!(closed_root);
        assert!(
            !svg.chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')),
            "control characters in the document"
        );
    }

    fn assert_entities(text: &str) {
        for (at, _) in text.match_indices('&') {
            let entity = &text[at..];
            assert!(
                ["&lt;", "&gt;", "&amp;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| entity.starts_with(e)),
                "bare '&' in {text:?}"
            );
        }
    }

    fn polylines(svg: &str) -> usize {
        svg.matches("<polyline").count()
    }

    #[test]
    fn line_chart_with_two_series() {
        let chart = line_chart(vec![
            series("alpha", &[(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)]),
            series("beta", &[(0.0, 2.0), (1.0, 0.5), (2.0, 4.0)]),
        ]);
        let svg = render_svg(&chart).expect("renders");
        assert_well_formed(&svg);
        assert!(svg.contains("width=\"800\"") && svg.contains("height=\"480\""));
        assert!(svg.contains("Round trips"));
        assert!(svg.contains("time (s)") && svg.contains("rtt (ms)"));
        assert!(svg.contains("alpha") && svg.contains("beta"));
        // Distinct colours, a marker per point, and a white background.
        assert!(svg.contains("#1F77B4") && svg.contains("#FF7F0E"));
        assert!(svg.matches("<circle").count() >= 6);
        assert!(svg.contains("fill=\"#FFFFFF\""));
        // Two lines plus two legend samples.
        assert!(polylines(&svg) >= 4);
    }

    #[test]
    fn single_series_has_no_legend() {
        let chart = line_chart(vec![series("only", &[(0.0, 1.0), (1.0, 2.0)])]);
        let svg = render_svg(&chart).expect("renders");
        assert_well_formed(&svg);
        assert!(!svg.contains(">\nonly\n<"), "legend drawn for one series");
    }

    #[test]
    fn bars_chart() {
        let chart = Chart {
            title: "Hops".to_owned(),
            x_label: "hops".to_owned(),
            y_label: "lookups".to_owned(),
            kind: ChartKind::Bars,
            series: vec![
                series("before", &[(1.0, 10.0), (2.0, 25.0), (3.0, 5.0)]),
                series("after", &[(1.0, 20.0), (2.0, 12.0), (4.0, 1.0)]),
            ],
            y_range: None,
        };
        let svg = render_svg(&chart).expect("renders");
        assert_well_formed(&svg);
        assert!(svg.contains("Hops") && svg.contains("before") && svg.contains("after"));
        // Six bars and two legend swatches, in the series' colours.
        let bars = svg
            .lines()
            .filter(|l| l.starts_with("<rect") && l.contains("#1F77B4"))
            .count();
        assert_eq!(bars, 3 + 1);
        let bars = svg
            .lines()
            .filter(|l| l.starts_with("<rect") && l.contains("#FF7F0E"))
            .count();
        assert_eq!(bars, 3 + 1);
    }

    #[test]
    fn bars_with_negative_values_and_fixed_range() {
        let mut chart = line_chart(vec![series("delta", &[(0.0, -3.0), (1.0, 4.0)])]);
        chart.kind = ChartKind::Bars;
        assert_well_formed(&render_svg(&chart).expect("renders"));
        chart.y_range = Some((1.0, 2.0));
        assert_well_formed(&render_svg(&chart).expect("renders clipped"));
    }

    #[test]
    fn single_point() {
        for kind in [ChartKind::Line, ChartKind::Bars] {
            let mut chart = line_chart(vec![series("one", &[(5.0, 7.0)])]);
            chart.kind = kind;
            let svg = render_svg(&chart).expect("renders");
            assert_well_formed(&svg);
        }
        let chart = line_chart(vec![series("one", &[(5.0, 7.0)])]);
        let svg = render_svg(&chart).expect("renders");
        assert_eq!(svg.matches("<circle").count(), 1);
    }

    #[test]
    fn equal_values() {
        for kind in [ChartKind::Line, ChartKind::Bars] {
            for (x, y) in [(0.0, 0.0), (3.0, 3.0), (-2.0, -2.0), (1e9, 1e-9)] {
                let mut chart = line_chart(vec![series("flat", &[(x, y), (x, y), (x, y)])]);
                chart.kind = kind;
                let svg = render_svg(&chart).expect("renders");
                assert_well_formed(&svg);
            }
            let mut chart = line_chart(vec![series("flat", &[(0.0, 2.0), (1.0, 2.0)])]);
            chart.kind = kind;
            assert_well_formed(&render_svg(&chart).expect("renders"));
            chart.y_range = Some((2.0, 2.0));
            assert_well_formed(&render_svg(&chart).expect("renders fixed equal range"));
        }
    }

    #[test]
    fn non_finite_points_are_skipped() {
        let chart = line_chart(vec![
            series(
                "gappy",
                &[
                    (0.0, 1.0),
                    (1.0, f64::NAN),
                    (f64::INFINITY, 2.0),
                    (2.0, f64::NEG_INFINITY),
                    (3.0, 2.0),
                ],
            ),
            series("all nan", &[(f64::NAN, f64::NAN)]),
        ]);
        let svg = render_svg(&chart).expect("renders");
        assert_well_formed(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert_eq!(svg.matches("<circle").count(), 2);
        // The empty series still gets a legend entry.
        assert!(svg.contains("all nan"));
    }

    #[test]
    fn empty_is_an_error() {
        let chart = line_chart(Vec::new());
        assert!(matches!(render_svg(&chart), Err(PlotError::Empty { .. })));
        let chart = line_chart(vec![series("a", &[]), series("b", &[])]);
        assert!(matches!(render_svg(&chart), Err(PlotError::Empty { .. })));
        let chart = line_chart(vec![series(
            "nan",
            &[(f64::NAN, 1.0), (1.0, f64::INFINITY)],
        )]);
        let error = render_svg(&chart).expect_err("no finite point");
        assert!(matches!(error, PlotError::Empty { .. }));
        assert_eq!(error.to_string(), "chart \"Round trips\" has no points");
    }

    #[test]
    fn invalid_fixed_range_is_an_error() {
        let mut chart = line_chart(vec![series("a", &[(0.0, 1.0), (1.0, 2.0)])]);
        for range in [(2.0, 1.0), (f64::NAN, 1.0), (0.0, f64::INFINITY)] {
            chart.y_range = Some(range);
            assert!(matches!(
                render_svg(&chart),
                Err(PlotError::InvalidRange { axis: "y", .. })
            ));
        }
    }

    #[test]
    fn fixed_range_clips_lines() {
        let mut chart = line_chart(vec![series(
            "spiky",
            &[
                (0.0, 1.0),
                (1.0, 100.0),
                (2.0, 1.0),
                (3.0, -50.0),
                (4.0, 2.0),
            ],
        )]);
        chart.y_range = Some((0.0, 10.0));
        let svg = render_svg(&chart).expect("renders");
        assert_well_formed(&svg);
        // Three visible markers; the line is cut where it leaves the range.
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(polylines(&svg) >= 3);
    }

    #[test]
    fn title_and_names_are_escaped() {
        let mut chart = line_chart(vec![
            series("a<b & \"c\"", &[(0.0, 1.0), (1.0, 2.0)]),
            series("x>y 'q'", &[(0.0, 2.0), (1.0, 1.0)]),
        ]);
        chart.title = "<&> latency\u{0}\u{7}\nchart".to_owned();
        chart.x_label = "t <s>".to_owned();
        let svg = render_svg(&chart).expect("renders");
        assert_well_formed(&svg);
        assert!(svg.contains("&lt;&amp;&gt; latency"));
        assert!(svg.contains("a&lt;b &amp; &quot;c&quot;"));
        assert!(svg.contains("x&gt;y &apos;q&apos;"));
        assert!(svg.contains("t &lt;s&gt;"));
        assert!(!svg.contains("<&>"));
    }

    #[test]
    fn extreme_magnitudes_do_not_panic() {
        let cases: &[&[(f64, f64)]] = &[
            &[(0.0, 1e-320), (1.0, 2e-320)],
            &[(1e-320, 1.0), (2e-320, 2.0)],
            &[(0.0, 1e250), (1.0, -1e250)],
            &[(0.0, f64::MAX), (1.0, f64::MIN)],
            &[(f64::MIN, 0.0), (f64::MAX, 1.0)],
            &[(1e15, 1.0), (1e15 + 0.125, 2.0)],
            &[(0.0, 1e15), (1.0, 1e15 + 0.125)],
            &[(-1e-5, 3e-7), (2e-5, -4e-7)],
        ];
        for kind in [ChartKind::Line, ChartKind::Bars] {
            for points in cases {
                let mut chart = line_chart(vec![series("extreme", points)]);
                chart.kind = kind;
                match render_svg(&chart) {
                    Ok(svg) => assert_well_formed(&svg),
                    Err(error) => assert!(
                        matches!(error, PlotError::InvalidRange { .. }),
                        "{points:?}: {error}"
                    ),
                }
            }
        }
    }

    #[test]
    fn many_series_get_distinct_colours() {
        let all: Vec<Series> = (0..25)
            .map(|i| series(&format!("s{i}"), &[(0.0, i as f64), (1.0, i as f64 + 1.0)]))
            .collect();
        let colours: std::collections::BTreeSet<_> = (0..25)
            .map(|i| {
                let c = series_color(i);
                (c.0, c.1, c.2)
            })
            .collect();
        assert_eq!(colours.len(), 25);
        assert_well_formed(&render_svg(&line_chart(all)).expect("renders"));
    }

    #[test]
    fn tick_labels() {
        let f = TickFormat::new((0.0, 1.0));
        assert_eq!(f.format(0.30000000000000004), "0.3");
        assert_eq!(f.format(1e-17), "0");
        assert_eq!(f.format(0.5), "0.5");
        let f = TickFormat::new((0.0, 500.0));
        assert_eq!(f.format(200.0), "200");
        let f = TickFormat::new((0.0, 3e7));
        assert_eq!(f.format(2.5e7), "2.5e7");
        let f = TickFormat::new((0.0, 2e-4));
        assert_eq!(f.format(5e-5), "5e-5");
    }
}
