//! The report's charts, drawn with plotters into SVG strings: events/s,
//! CPU per event and delivery latency by scenario as horizontal bars, and
//! each scenario's throughput over time as a small line chart.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{thousands, Measure, Report, Scenario};

const TAILRACE: RGBColor = RGBColor(31, 119, 180);
const BASELINE: RGBColor = RGBColor(150, 150, 150);
const P99: RGBColor = RGBColor(214, 39, 40);
const FONT: &str = "sans-serif";

/// One series of bars: a value (or none) per scenario.
struct Bars<'a> {
    name: &'a str,
    color: RGBColor,
    values: Vec<Option<f64>>,
}

/// A horizontal bar chart: one row per scenario (first at the top), the
/// series side by side in each row, each bar labelled with `label(value)`.
fn bars(
    title: &str,
    axis: &str,
    scenarios: &[Scenario],
    series: &[Bars],
    label: impl Fn(f64) -> String,
) -> anyhow::Result<String> {
    let rows = scenarios.len().max(1);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .fold(0.0, f64::max);
    // Room on the right for the figures written after the longest bar.
    let max = if max > 0.0 { max * 1.3 } else { 1.0 };
    let height = 90 + 26 * series.len() as u32 * rows as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let top = rows as f64 - 0.5;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(230)
            .build_cartesian_2d(0.0..max, -0.5..top)?;
        let row_name = |y: &f64| {
            // One label a row, at the row's whole number.
            if (y - y.round()).abs() > 1e-6 {
                return String::new();
            }
            let i = rows as i64 - 1 - y.round() as i64;
            scenarios
                .get(i as usize)
                .filter(|_| i >= 0)
                .map_or(String::new(), |s| s.title.clone())
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows + 1)
            .y_label_formatter(&row_name)
            .x_label_formatter(&|x| label(*x))
            .x_labels(6)
            .x_desc(axis)
            .label_style((FONT, 12))
            .draw()?;
        let slot = 0.8 / series.len() as f64;
        let text = TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (j, s) in series.iter().enumerate() {
            let placed: Vec<(f64, f64, f64)> = s
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let y = (rows - 1 - i) as f64 + 0.4 - slot * j as f64;
                    v.map(|v| (v, y - slot * 0.9, y))
                })
                .collect();
            let color = s.color;
            chart
                .draw_series(
                    placed
                        .iter()
                        .map(|&(v, y0, y1)| Rectangle::new([(0.0, y0), (v, y1)], color.filled())),
                )?
                .label(s.name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            chart.draw_series(placed.iter().map(|&(v, y0, y1)| {
                Text::new(format!(" {}", label(v)), (v, (y0 + y1) / 2.0), text.clone())
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

fn rate_label(v: f64) -> String {
    thousands(v.round() as u64)
}

/// events/s per scenario, tailrace beside its baseline.
pub fn rates(report: &Report) -> anyhow::Result<String> {
    let s = &report.scenarios;
    bars(
        &format!("events/s per scenario{}", quick(report)),
        "events/s",
        s,
        &[
            Bars {
                name: "tailrace",
                color: TAILRACE,
                values: each(s, |s| s.tailrace.as_ref().map(Measure::rate)),
            },
            Bars {
                name: "baseline (kcat, or as the scenario says)",
                color: BASELINE,
                values: each(s, |s| s.baseline.as_ref().map(Measure::rate)),
            },
        ],
        rate_label,
    )
}

/// CPU seconds per million events per scenario, tailrace beside its
/// baseline.
pub fn cpu(report: &Report) -> anyhow::Result<String> {
    let s = &report.scenarios;
    bars(
        &format!(
            "CPU seconds per million events (lower is better){}",
            quick(report)
        ),
        "CPU-s / M events",
        s,
        &[
            Bars {
                name: "tailrace",
                color: TAILRACE,
                values: each(s, |s| s.tailrace.as_ref()?.cpu_per_million()),
            },
            Bars {
                name: "baseline",
                color: BASELINE,
                values: each(s, |s| s.baseline.as_ref()?.cpu_per_million()),
            },
        ],
        |v| format!("{v:.2}"),
    )
}

/// tailrace's delivery latency p50 and p99 per scenario, in milliseconds.
pub fn latency(report: &Report) -> anyhow::Result<String> {
    let s = &report.scenarios;
    let ms =
        |q: fn(&Measure) -> Option<f64>| each(s, move |s| q(s.tailrace.as_ref()?).map(|v| v * 1e3));
    bars(
        &format!(
            "tailrace delivery latency, read to acknowledged (ms){}",
            quick(report)
        ),
        "milliseconds",
        s,
        &[
            Bars {
                name: "p50",
                color: TAILRACE,
                values: ms(|m| m.p50_seconds),
            },
            Bars {
                name: "p99",
                color: P99,
                values: ms(|m| m.p99_seconds),
            },
        ],
        |v| format!("{v:.0} ms"),
    )
}

/// Each scenario's delivered events/s over time, one small chart per
/// scenario: tailrace's line, and its baseline's line where the baseline
/// has a timeline (another tailrace run), else the baseline's mean rate.
pub fn throughput(report: &Report) -> anyhow::Result<String> {
    const W: u32 = 450;
    const H: u32 = 230;
    let shown: Vec<&Scenario> = report
        .scenarios
        .iter()
        .filter(|s| s.tailrace.as_ref().is_some_and(|t| t.timeline.len() > 1))
        .collect();
    let cols = shown.len().clamp(1, 2);
    let rows = shown.len().div_ceil(2).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W * cols as u32, 40 + H * rows as u32))
            .into_drawing_area();
        root.fill(&WHITE)?;
        let (head, body) = root.split_vertically(40);
        head.draw(&Text::new(
            format!(
                "delivered events/s over time (1 s windows), tailrace (blue) and its baseline (grey){}",
                quick(report)
            ),
            (10, 12),
            (FONT, 15).into_font(),
        ))?;
        if shown.is_empty() {
            body.draw(&Text::new(
                "no scenario has a timeline",
                (10, 10),
                (FONT, 13).into_font(),
            ))?;
        }
        for (s, area) in shown.iter().zip(body.split_evenly((rows, cols))) {
            let t = s.tailrace.as_ref().expect("filtered");
            let line = rate_series(&t.timeline, 1.0);
            let base = s.baseline.as_ref();
            let base_line = base
                .map(|b| rate_series(&b.timeline, 1.0))
                .unwrap_or_default();
            let x_max = line
                .iter()
                .chain(&base_line)
                .map(|p| p.0)
                .fold(1.0, f64::max);
            let y_max = line
                .iter()
                .chain(&base_line)
                .map(|p| p.1)
                .chain(base.map(Measure::rate))
                .fold(1.0, f64::max)
                * 1.1;
            let mut chart = ChartBuilder::on(&area)
                .caption(&s.title, (FONT, 13))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(70)
                .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_label_formatter(&|y| rate_label(*y))
                .x_labels(6)
                .y_labels(5)
                .label_style((FONT, 10))
                .draw()?;
            chart
                .draw_series(LineSeries::new(line, TAILRACE.stroke_width(2)))?
                .label("tailrace")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], TAILRACE.stroke_width(2)));
            if let Some(b) = base {
                let name = b.label.split(',').next().unwrap_or_default().to_string();
                let points = if base_line.len() > 1 {
                    base_line
                } else {
                    // No timeline (kcat): its mean over its own duration.
                    vec![(0.0, b.rate()), (b.seconds.min(x_max), b.rate())]
                };
                chart
                    .draw_series(LineSeries::new(points, BASELINE.stroke_width(2)))?
                    .label(name)
                    .legend(|(x, y)| {
                        PathElement::new([(x, y), (x + 14, y)], BASELINE.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .label_font((FONT, 10))
                .draw()?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// Rates from a delivered counter sampled over time: at each sample at
/// least `window` seconds after the series began, what was delivered
/// since the sample `window` seconds before (or the nearest earlier one),
/// per second. Points are (seconds, events/s).
pub fn rate_series(timeline: &[(f64, u64)], window: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(t, n) in timeline {
        while j + 1 < timeline.len() && timeline[j + 1].0 <= t - window {
            j += 1;
        }
        let (t0, n0) = timeline[j];
        if t - t0 >= window {
            out.push((t, n.saturating_sub(n0) as f64 / (t - t0)));
        }
    }
    out
}

fn each(s: &[Scenario], f: impl Fn(&Scenario) -> Option<f64>) -> Vec<Option<f64>> {
    s.iter().map(f).collect()
}

fn quick(report: &Report) -> &'static str {
    if report.quick {
        " (--quick size)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::report;

    /// The widths of the filled rectangles of `fill` (#RRGGBB), in order.
    fn widths(svg: &str, fill: &str) -> Vec<f64> {
        svg.lines()
            .filter(|l| {
                l.trim_start().starts_with("<rect") && l.contains(&format!("fill=\"{fill}\""))
            })
            .map(|l| {
                l.split("width=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_steady_counter_gives_a_flat_rate_and_a_stall_shows() {
        let steady: Vec<(f64, u64)> = (0..=20).map(|i| (i as f64 * 0.25, i * 25_000)).collect();
        let rates = rate_series(&steady, 1.0);
        assert_eq!(rates.len(), 17, "{rates:?}");
        assert!(
            rates.iter().all(|&(_, r)| (r - 100_000.0).abs() < 1e-6),
            "{rates:?}"
        );
        assert_eq!(rates[0].0, 1.0);
        // Nothing delivered from 2 s to 4 s.
        let stalled: Vec<(f64, u64)> = (0..=24)
            .map(|i| {
                let t = i as f64 * 0.25;
                (t, (t.min(2.0) + (t - 4.0).max(0.0)) as u64 * 1000)
            })
            .collect();
        let rates = rate_series(&stalled, 1.0);
        let at = |t: f64| rates.iter().find(|p| (p.0 - t).abs() < 1e-9).unwrap().1;
        assert_eq!(at(3.5), 0.0);
        assert_eq!(at(2.0), 1000.0);
        assert!(rate_series(&[(0.0, 5)], 1.0).is_empty());
    }

    #[test]
    fn the_bars_are_to_scale_and_the_text_is_escaped() {
        let svg = rates(&report()).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // tailrace 1,000,000/s; kcat 500,000/s, and 100/s in the failed
        // scenario.
        let t = widths(&svg, "#1F77B4");
        let b = widths(&svg, "#969696");
        // The legend's swatch is the last of each colour.
        assert_eq!((t.len(), b.len()), (2, 3), "{svg}");
        assert!((t[0] / b[0] - 2.0).abs() < 0.02, "{t:?} {b:?}");
        assert!(b[1] < 1.0, "{b:?}");
        assert!(svg.contains("1,000,000") && svg.contains("500,000"));
        assert!(svg.contains("7. TLS + SASL &lt;&amp;&gt;") && !svg.contains("<&>"));
        assert!(svg.contains("(--quick size)"));
    }

    #[test]
    fn the_latency_chart_has_p50_and_p99_where_measured() {
        let svg = latency(&report()).unwrap();
        let (p50, p99) = (widths(&svg, "#1F77B4"), widths(&svg, "#D62728"));
        // One bar each (the TLS scenario has no tailrace run) and a swatch.
        assert_eq!((p50.len(), p99.len()), (2, 2), "{svg}");
        assert!((p99[0] / p50[0] - 3.8).abs() < 0.05, "{p50:?} {p99:?}");
        assert!(svg.contains("12 ms") && svg.contains("46 ms"));
        // Without the failed scenario, whose 100 events make kcat's CPU
        // per event huge.
        let mut raw = report();
        raw.scenarios.truncate(1);
        let cpu = cpu(&raw).unwrap();
        // 1.5 CPU-s per million for tailrace, 3.0 for kcat.
        let (t, b) = (widths(&cpu, "#1F77B4"), widths(&cpu, "#969696"));
        assert!((b[0] / t[0] - 2.0).abs() < 0.02, "{t:?} {b:?}");
    }

    #[test]
    fn the_throughput_chart_has_a_panel_per_scenario_with_a_timeline() {
        let svg = throughput(&report()).unwrap();
        assert!(svg.contains("1. raw file → Kafka"));
        // The TLS scenario has no tailrace run, so no panel.
        assert!(!svg.contains("TLS"));
        let lines = |color: &str| {
            svg.lines()
                .filter(|l| l.contains("<polyline") && l.contains(&format!("stroke=\"{color}\"")))
                .count()
        };
        // tailrace's line and kcat's mean, each with its legend.
        assert_eq!((lines("#1F77B4"), lines("#969696")), (2, 2), "{svg}");
        let mut none = report();
        none.scenarios.retain(|s| s.tailrace.is_none());
        assert!(throughput(&none)
            .unwrap()
            .contains("no scenario has a timeline"));
    }
}
