//! The benchmark chart: bar-chart panels drawn with plotters' SVG backend.
//! Each [`Panel`] is a titled set of bars with an optional reference line
//! (a target or a bound); [`render`] lays panels out in a grid.

use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// Panel size and grid, in SVG user units (px).
const PANEL_W: f64 = 360.0;
const PANEL_H: f64 = 260.0;
const COLS: usize = 3;
/// Plot area margins inside a panel.
const TOP: f64 = 54.0;
const BOTTOM: f64 = 56.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;

pub const XDPLB: &str = "#d9480f";
pub const OTHER: &str = "#4c6ef5";
pub const MUTED: &str = "#adb5bd";
pub const GOOD: &str = "#2b8a3e";

pub struct Bar {
    pub label: String,
    pub value: f64,
    pub color: &'static str,
}

pub struct Panel {
    pub title: String,
    pub unit: String,
    pub bars: Vec<Bar>,
    /// (value, label) drawn as a dashed line across the panel.
    pub reference: Option<(f64, String)>,
}

/// A round axis maximum at or above `v`: 1, 2 or 5 × 10ⁿ.
fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || v.is_infinite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&m| m >= v)
        .unwrap_or(10.0 * p)
}

/// An axis tick: as many decimals as the step between ticks needs.
fn fmt_tick(v: f64, step: f64) -> String {
    let whole = |x: f64| (x - x.round()).abs() < 1e-9;
    if whole(step) {
        format!("{v:.0}")
    } else if whole(step * 10.0) {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A bar's value label: three significant digits or a whole number.
fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn hex(c: &str) -> RGBColor {
    let v = u32::from_str_radix(c.trim_start_matches('#'), 16).unwrap_or(0);
    RGBColor((v >> 16) as u8, (v >> 8) as u8, v as u8)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn panel(area: &Area, p: &Panel) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    area.fill(&WHITE)?;
    let max_v = p
        .bars
        .iter()
        .map(|b| b.value)
        .chain(p.reference.as_ref().map(|r| r.0))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let top = nice_max(max_v * 1.08);
    let n = p.bars.len().max(1);
    let font = |size: f64| ("DejaVu Sans", size).into_font();
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, font(13.0).style(FontStyle::Bold))
        .margin_top(4)
        .margin_right(RIGHT as u32)
        .set_label_area_size(LabelAreaPosition::Left, LEFT as u32)
        .set_label_area_size(LabelAreaPosition::Bottom, (BOTTOM - 20.0) as u32)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_labels(5)
        .y_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                fmt_tick(*v, top / 4.0)
            }
        })
        .y_label_style(font(9.0))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(0xf1, 0xf3, 0xf5))
        .axis_style(RGBColor(0x49, 0x50, 0x57))
        .draw()?;
    let plot = chart.plotting_area();
    // The unit under the title.
    area.draw(&Text::new(
        p.unit.clone(),
        ((area.dim_in_pixel().0 / 2) as i32, 22),
        font(10.0)
            .color(&RGBColor(0x49, 0x50, 0x57))
            .pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    for (i, b) in p.bars.iter().enumerate() {
        let (l, r) = (i as f64 + 0.15, i as f64 + 0.85);
        let cx = i as f64 + 0.5;
        if b.value.is_finite() {
            let v = b.value.clamp(0.0, top);
            plot.draw(&Rectangle::new([(l, 0.0), (r, v)], hex(b.color).filled()))?;
            plot.draw(&Text::new(
                fmt_num(b.value),
                (cx, v),
                TextStyle::from(font(9.0)).pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))?;
        } else {
            plot.draw(&Text::new(
                "failed",
                (cx, 0.0),
                font(9.0)
                    .color(&RGBColor(0xc9, 0x2a, 0x2a))
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))?;
        }
        // Labels may hold two lines separated by '\n', below the axis.
        let (x, y) = plot.map_coordinate(&(cx, 0.0));
        let (ox, oy) = area.get_base_pixel();
        for (k, line) in b.label.split('\n').enumerate() {
            area.draw(&Text::new(
                line.to_string(),
                (x - ox, y - oy + 6 + 11 * k as i32),
                TextStyle::from(font(9.5)).pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
    }
    if let Some((v, label)) = &p.reference {
        let style = ShapeStyle::from(&hex(GOOD)).stroke_width(2);
        chart.draw_series(DashedLineSeries::new(
            [(0.0, *v), (n as f64, *v)],
            5,
            3,
            style,
        ))?;
        // Its legend in the top margin, so it never covers a bar's value.
        let (w, _) = area.dim_in_pixel();
        area.draw(&Text::new(
            label.clone(),
            (w as i32 - RIGHT as i32, (TOP - 18.0) as i32),
            font(9.5)
                .color(&hex(GOOD))
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// The whole picture: a title line, then the panels in rows of [`COLS`].
pub fn render(title: &str, panels: &[Panel]) -> String {
    let rows = panels.len().div_ceil(COLS).max(1);
    let w = PANEL_W * COLS as f64 + 10.0 * (COLS as f64 + 1.0);
    let h = 36.0 + (PANEL_H + 10.0) * rows as f64;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (w as u32, h as u32)).into_drawing_area();
        let drawn = (|| -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
            root.fill(&RGBColor(0xf8, 0xf9, 0xfa))?;
            root.draw(&Text::new(
                title.to_string(),
                (10, 12),
                ("DejaVu Sans", 13.0).into_font().style(FontStyle::Bold),
            ))?;
            for (i, p) in panels.iter().enumerate() {
                let x0 = 10.0 + (PANEL_W + 10.0) * (i % COLS) as f64;
                let y0 = 36.0 + (PANEL_H + 10.0) * (i / COLS) as f64;
                let area = root
                    .clone()
                    .shrink((x0 as u32, y0 as u32), (PANEL_W as u32, PANEL_H as u32));
                panel(&area, p)?;
            }
            root.present()
        })();
        if let Err(e) = drawn {
            eprintln!("warning: benchmark chart incomplete: {e}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels() {
        assert_eq!(fmt_tick(7.5, 2.5), "7.5");
        assert_eq!(fmt_tick(250.0, 125.0), "250");
        assert_eq!(fmt_tick(0.75, 0.25), "0.75");
        assert_eq!(fmt_num(624.0), "624");
        assert_eq!(fmt_num(4.9), "4.90");
    }

    #[test]
    fn nice_axis() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(450.0), 500.0);
    }

    #[test]
    fn renders_escaped_panels() {
        let svg = render(
            "t<1>",
            &[Panel {
                title: "a & b".into(),
                unit: "ns".into(),
                bars: vec![
                    Bar {
                        label: "x\ny".into(),
                        value: 3.0,
                        color: XDPLB,
                    },
                    Bar {
                        label: "z".into(),
                        value: f64::NAN,
                        color: OTHER,
                    },
                ],
                reference: Some((2.0, "target".into())),
            }],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("t&lt;1&gt;") && svg.contains("a &amp; b"));
        assert!(svg.contains("failed") && svg.contains("target"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
