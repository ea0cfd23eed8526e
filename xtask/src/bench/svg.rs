//! A hand-written SVG of bar-chart panels — no plotting dependency.
//! Each [`Panel`] is a titled set of bars with an optional reference line
//! (a target or a bound); [`render`] lays panels out in a grid.

use std::fmt::Write as _;

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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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

fn panel(s: &mut String, p: &Panel, x0: f64, y0: f64) {
    let plot_w = PANEL_W - LEFT - RIGHT;
    let plot_h = PANEL_H - TOP - BOTTOM;
    let max_v = p
        .bars
        .iter()
        .map(|b| b.value)
        .chain(p.reference.as_ref().map(|r| r.0))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let top = nice_max(max_v * 1.08);
    let y = |v: f64| y0 + TOP + plot_h * (1.0 - (v / top).clamp(0.0, 1.0));
    let _ = writeln!(
        s,
        r##"<g><rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="#fff" stroke="#dee2e6"/>
<text x="{}" y="{}" font-size="13" font-weight="bold" text-anchor="middle">{}</text>
<text x="{}" y="{}" font-size="10" fill="#495057" text-anchor="middle">{}</text>"##,
        x0 + PANEL_W / 2.0,
        y0 + 17.0,
        esc(&p.title),
        x0 + PANEL_W / 2.0,
        y0 + 31.0,
        esc(&p.unit)
    );
    // Axis with 5 ticks.
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#f1f3f5"/><text x="{}" y="{:.1}" font-size="9" text-anchor="end" fill="#495057">{}</text>"##,
            x0 + LEFT,
            x0 + LEFT + plot_w,
            x0 + LEFT - 4.0,
            yy + 3.0,
            fmt_tick(v, top / 4.0)
        );
    }
    let n = p.bars.len().max(1) as f64;
    let slot = plot_w / n;
    let bw = (slot * 0.7).min(48.0);
    for (i, b) in p.bars.iter().enumerate() {
        let cx = x0 + LEFT + slot * (i as f64 + 0.5);
        let label_y = y0 + PANEL_H - BOTTOM + 14.0;
        if b.value.is_finite() {
            let yy = y(b.value);
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{yy:.1}" width="{bw:.1}" height="{:.1}" fill="{}"/><text x="{cx:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"##,
                cx - bw / 2.0,
                (y(0.0) - yy).max(0.0),
                b.color,
                yy - 3.0,
                fmt_num(b.value)
            );
        } else {
            let _ = writeln!(
                s,
                r##"<text x="{cx:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="#c92a2a">failed</text>"##,
                y(0.0) - 4.0
            );
        }
        // Labels may hold two lines separated by '\n'.
        for (k, line) in b.label.split('\n').enumerate() {
            let _ = writeln!(
                s,
                r##"<text x="{cx:.1}" y="{:.1}" font-size="9.5" text-anchor="middle">{}</text>"##,
                label_y + 11.0 * k as f64,
                esc(line)
            );
        }
    }
    if let Some((v, label)) = &p.reference {
        // The line across the plot; its legend in the top margin, so it
        // never covers a bar's value.
        let yy = y(*v);
        let (lx, ly) = (x0 + PANEL_W - RIGHT, y0 + TOP - 9.0);
        let _ = writeln!(
            s,
            r##"<line x1="{}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="{GOOD}" stroke-dasharray="5,3" stroke-width="1.5"/><line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{GOOD}" stroke-dasharray="5,3" stroke-width="1.5"/><text x="{lx:.1}" y="{ly:.1}" font-size="9.5" text-anchor="end" fill="{GOOD}">{}</text>"##,
            x0 + LEFT,
            x0 + LEFT + plot_w,
            lx - 6.5 * label.chars().count() as f64 - 26.0,
            lx - 6.5 * label.chars().count() as f64 - 6.0,
            ly - 3.0,
            ly - 3.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#495057"/></g>"##,
        x0 + LEFT,
        x0 + LEFT + plot_w,
        y(0.0),
        y(0.0)
    );
}

/// The whole picture: a title line, then the panels in rows of [`COLS`].
pub fn render(title: &str, panels: &[Panel]) -> String {
    let rows = panels.len().div_ceil(COLS).max(1);
    let w = PANEL_W * COLS as f64 + 10.0 * (COLS as f64 + 1.0);
    let h = 36.0 + (PANEL_H + 10.0) * rows as f64;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
<rect width="100%" height="100%" fill="#f8f9fa"/>
<text x="10" y="23" font-size="13" font-weight="bold">{}</text>
"##,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        let x0 = 10.0 + (PANEL_W + 10.0) * (i % COLS) as f64;
        let y0 = 36.0 + (PANEL_H + 10.0) * (i / COLS) as f64;
        panel(&mut s, p, x0, y0);
    }
    s.push_str("</svg>\n");
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
