//! SVG plots of the sweep CSVs ([`crate::sweep`]), with `plotters`' SVG backend (text is
//! emitted as SVG `<text>`, so no font library or system package is needed). Each function
//! reads the CSV it plots, so a plot can be re-rendered from a CSV alone.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context as _};
use plotters::coord::Shift;
use plotters::prelude::*;

/// A CSV file as rows of named fields.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = text.lines();
        let header = lines
            .next()
            .ok_or_else(|| anyhow!("{} is empty", path.display()))?
            .split(',')
            .map(str::to_owned)
            .collect();
        let rows = lines
            .filter(|l| !l.is_empty())
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect();
        Ok(Self { header, rows })
    }

    fn col(&self, name: &str) -> anyhow::Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow!("no column {name}"))
    }

    /// Rows where `filter` holds, as `(x, y)` of two numeric columns.
    fn points(
        &self,
        x: &str,
        y: &str,
        filter: impl Fn(&dyn Fn(&str) -> String) -> bool,
    ) -> anyhow::Result<Vec<(f64, f64)>> {
        let (xi, yi) = (self.col(x)?, self.col(y)?);
        let mut out = Vec::new();
        for row in &self.rows {
            let get = |name: &str| {
                self.col(name)
                    .ok()
                    .and_then(|i| row.get(i).cloned())
                    .unwrap_or_default()
            };
            if !filter(&get) {
                continue;
            }
            let (Ok(xv), Ok(yv)) = (row[xi].parse::<f64>(), row[yi].parse::<f64>()) else {
                continue;
            };
            if yv.is_finite() {
                out.push((xv, yv));
            }
        }
        Ok(out)
    }
}

/// Mean of `y` per distinct `x`.
fn mean_by_x(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut acc: BTreeMap<u64, (f64, f64, usize)> = BTreeMap::new();
    for (x, y) in points {
        let e = acc.entry(x.to_bits()).or_insert((*x, 0.0, 0));
        e.1 += y;
        e.2 += 1;
    }
    let mut v: Vec<(f64, f64)> = acc.values().map(|(x, s, c)| (*x, s / *c as f64)).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// One line of a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    dashed: bool,
}

impl Series {
    fn new(name: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Self {
            name: name.into(),
            points,
            color,
            dashed: false,
        }
    }

    fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// Axis scale: values are transformed before plotting, labels show the original values.
#[derive(Clone, Copy)]
enum Scale {
    Linear,
    Log2,
    Log10,
}

impl Scale {
    fn to(self, v: f64) -> f64 {
        match self {
            Self::Linear => v,
            Self::Log2 => v.max(1e-9).log2(),
            Self::Log10 => v.max(1e-9).log10(),
        }
    }

    fn label(self, v: f64) -> String {
        let x = match self {
            Self::Linear => v,
            Self::Log2 => v.exp2(),
            Self::Log10 => 10f64.powf(v),
        };
        if x >= 100.0 || (x - x.round()).abs() < 1e-6 {
            format!("{x:.0}")
        } else if x >= 1.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.2}")
        }
    }
}

/// Points drawn as crosses, with a legend name and a colour.
type Crosses = (String, Vec<(f64, f64)>, RGBColor);

/// Chart settings.
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x_scale: Scale,
    y_scale: Scale,
    /// Fixed y range (original units), or from the data.
    y_range: Option<(f64, f64)>,
    /// Horizontal reference lines (original units) with labels.
    hlines: Vec<(f64, String)>,
    /// Extra points drawn as crosses (e.g. failed runs), with a legend name.
    crosses: Vec<Crosses>,
    /// Where the legend goes.
    legend: SeriesLabelPosition,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn draw(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    chart: &Chart<'_>,
    series: &[Series],
) -> anyhow::Result<()> {
    let all = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .chain(chart.crosses.iter().flat_map(|c| c.1.iter().copied()));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in all {
        let (x, y) = (chart.x_scale.to(x), chart.y_scale.to(y));
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    for (y, _) in &chart.hlines {
        let y = chart.y_scale.to(*y);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if let Some((a, b)) = chart.y_range {
        y0 = chart.y_scale.to(a);
        y1 = chart.y_scale.to(b);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad_x = ((x1 - x0) * 0.04).max(1e-3);
    let pad_y = ((y1 - y0) * 0.08).max(1e-3);
    let mut ctx = ChartBuilder::on(area)
        .caption(chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0 - pad_x..x1 + pad_x, y0 - pad_y..y1 + pad_y)
        .map_err(|e| anyhow!("{e}"))?;
    let (xs, ys) = (chart.x_scale, chart.y_scale);
    let x_fmt = move |v: &f64| xs.label(*v);
    let y_fmt = move |v: &f64| ys.label(*v);
    // On a log axis, one label per power (of 2 or 10) lands the labels on round values.
    let labels = |scale: Scale, lo: f64, hi: f64| match scale {
        Scale::Linear => 10,
        Scale::Log2 | Scale::Log10 => {
            // A handful of integers: the span is a few dozen at most.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let k = (hi.floor() - lo.ceil()).max(0.0) as usize + 1;
            k.max(6)
        }
    };
    ctx.configure_mesh()
        .x_labels(labels(xs, x0, x1))
        .y_labels(labels(ys, y0, y1))
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    draw_hlines(&mut ctx, chart, (x0 - pad_x, x1 + pad_x), pad_y)?;
    for s in series {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|(x, y)| (xs.to(*x), ys.to(*y)))
            .collect();
        let color = s.color;
        let style = ShapeStyle::from(&color).stroke_width(2);
        if s.dashed {
            ctx.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                .map_err(|e| anyhow!("{e}"))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
        } else {
            ctx.draw_series(LineSeries::new(pts.clone(), style))
                .map_err(|e| anyhow!("{e}"))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        ctx.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    for (name, pts, color) in &chart.crosses {
        let color = *color;
        ctx.draw_series(
            pts.iter()
                .map(|(x, y)| Cross::new((xs.to(*x), ys.to(*y)), 6, color.stroke_width(2))),
        )
        .map_err(|e| anyhow!("{e}"))?
        .label(name.clone())
        .legend(move |(x, y)| Cross::new((x + 9, y), 5, color.stroke_width(2)));
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .position(chart.legend.clone())
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

type Ctx<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Dashed horizontal reference lines with their labels.
fn draw_hlines(
    ctx: &mut Ctx<'_, '_>,
    chart: &Chart<'_>,
    (x0, x1): (f64, f64),
    pad_y: f64,
) -> anyhow::Result<()> {
    let ys = chart.y_scale;
    for (y, label) in &chart.hlines {
        let y = ys.to(*y);
        let style = ShapeStyle::from(&BLACK.mix(0.45)).stroke_width(1);
        ctx.draw_series(DashedLineSeries::new([(x0, y), (x1, y)], 6, 4, style))
            .map_err(|e| anyhow!("{e}"))?;
        ctx.draw_series(std::iter::once(Text::new(
            label.clone(),
            (x1 - (x1 - x0) * 0.2, y + pad_y * 0.15),
            ("sans-serif", 12).into_font().color(&BLACK.mix(0.7)),
        )))
        .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

fn finish(root: &DrawingArea<SVGBackend<'_>, Shift>, path: &Path) -> anyhow::Result<()> {
    root.present().map_err(|e| anyhow!("{e}"))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Every plot whose CSV is in `dir`.
pub fn all(dir: &Path) -> anyhow::Result<()> {
    if dir.join("ceremony.csv").exists() {
        ceremony(&dir.join("ceremony.csv"), dir)?;
    }
    if dir.join("delegation.csv").exists() {
        delegation(&dir.join("delegation.csv"), dir)?;
    }
    if dir.join("timeouts.csv").exists() {
        timeouts(&dir.join("timeouts.csv"), &dir.join("round_cost.csv"), dir)?;
    }
    Ok(())
}

/// `ceremony_time.svg`: DKG and reshare completion and CPU time against n.
fn ceremony_time(table: &Table, out: &Path) -> anyhow::Result<()> {
    let ok = |phase: &'static str| {
        move |get: &dyn Fn(&str) -> String| get("phase") == phase && get("success") == "true"
    };
    let path = out.join("ceremony_time.svg");
    let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let series = vec![
        Series::new(
            "DKG: last correct node done",
            mean_by_x(&table.points("n", "completion_ms", ok("dkg"))?),
            PALETTE[0],
        ),
        Series::new(
            "reshare (refresh): last node done",
            mean_by_x(&table.points("n", "completion_ms", ok("reshare"))?),
            PALETTE[1],
        ),
        Series::new(
            "DKG: CPU time of the busiest node",
            mean_by_x(&table.points("n", "max_cpu_ms", ok("dkg"))?),
            PALETTE[0],
        )
        .dashed(),
        Series::new(
            "reshare: CPU time of the busiest node",
            mean_by_x(&table.points("n", "max_cpu_ms", ok("reshare"))?),
            PALETTE[1],
        )
        .dashed(),
    ];
    let chart = Chart {
        title: "DKG and reshare time vs committee size (t = ⌊2n/3⌋+1, 20-50 ms links)",
        x_label: "committee size n",
        y_label: "virtual time (ms, log)",
        x_scale: Scale::Log2,
        y_scale: Scale::Log10,
        y_range: None,
        hlines: Vec::new(),
        crosses: Vec::new(),
        legend: SeriesLabelPosition::UpperLeft,
    };
    draw(&root, &chart, &series)?;
    finish(&root, &path)
}

/// `ceremony_time.svg` and `ceremony_traffic.svg` from `ceremony.csv`.
pub fn ceremony(csv: &Path, out: &Path) -> anyhow::Result<()> {
    let table = Table::read(csv)?;
    let ok = |phase: &'static str| {
        move |get: &dyn Fn(&str) -> String| get("phase") == phase && get("success") == "true"
    };
    ceremony_time(&table, out)?;
    let path = out.join("ceremony_traffic.svg");
    let root = SVGBackend::new(&path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(600);
    let mb = |phase| -> anyhow::Result<Vec<(f64, f64)>> {
        Ok(mean_by_x(&table.points("n", "bytes", ok(phase))?)
            .into_iter()
            .map(|(x, y)| (x, y / 1e6))
            .collect())
    };
    draw(
        &left,
        &Chart {
            title: "messages sent (whole ceremony)",
            x_label: "committee size n",
            y_label: "messages (log)",
            x_scale: Scale::Log2,
            y_scale: Scale::Log10,
            y_range: None,
            hlines: Vec::new(),
            crosses: Vec::new(),
            legend: SeriesLabelPosition::UpperLeft,
        },
        &[
            Series::new(
                "DKG",
                mean_by_x(&table.points("n", "messages", ok("dkg"))?),
                PALETTE[0],
            ),
            Series::new(
                "reshare",
                mean_by_x(&table.points("n", "messages", ok("reshare"))?),
                PALETTE[1],
            )
            .dashed(),
        ],
    )?;
    draw(
        &right,
        &Chart {
            title: "bytes sent (real encodings)",
            x_label: "committee size n",
            y_label: "MB (log)",
            x_scale: Scale::Log2,
            y_scale: Scale::Log10,
            y_range: None,
            hlines: Vec::new(),
            crosses: Vec::new(),
            legend: SeriesLabelPosition::UpperLeft,
        },
        &[
            Series::new("DKG", mb("dkg")?, PALETTE[0]),
            Series::new("reshare", mb("reshare")?, PALETTE[1]).dashed(),
        ],
    )?;
    finish(&root, &path)
}

/// `delegation.svg` from `delegation.csv`.
pub fn delegation(csv: &Path, out: &Path) -> anyhow::Result<()> {
    let table = Table::read(csv)?;
    let mut ns: Vec<String> = table
        .rows
        .iter()
        .filter_map(|r| r.get(table.col("n").ok()?).cloned())
        .collect();
    ns.sort_by_key(|n| n.parse::<u32>().unwrap_or(0));
    ns.dedup();
    let path = out.join("delegation.svg");
    let root = SVGBackend::new(&path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(600);
    let mut success = Vec::new();
    let mut latency = Vec::new();
    let mut hlines = Vec::new();
    for (k, n) in ns.iter().enumerate() {
        for (j, fault) in ["crash", "wrong-partial"].into_iter().enumerate() {
            let color = PALETTE[(2 * k + j) % PALETTE.len()];
            let sel = |get: &dyn Fn(&str) -> String| get("n") == *n && get("fault") == fault;
            let label = format!("n={n}, {fault}");
            let s = Series::new(
                label.clone(),
                table.points("percent", "success_rate", sel)?,
                color,
            );
            success.push(if j == 1 { s.dashed() } else { s });
            latency.push(Series::new(
                format!("{label} p50"),
                table.points("percent", "p50_ms", sel)?,
                color,
            ));
            latency.push(
                Series::new(
                    format!("{label} p99"),
                    table.points("percent", "p99_ms", sel)?,
                    color,
                )
                .dashed(),
            );
        }
        if let Ok(n) = n.parse::<f64>() {
            let t = (2.0 * n / 3.0).floor() + 1.0;
            hlines.push((
                100.0 * (n - t) / n,
                format!("n={n}: n-t = {:.0}%", 100.0 * (n - t) / n),
            ));
        }
    }
    draw(
        &left,
        &Chart {
            title: "requests served (1 s deadline)",
            x_label: "faulty nodes (% of n)",
            y_label: "success rate",
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            y_range: Some((0.0, 1.0)),
            hlines: Vec::new(),
            crosses: Vec::new(),
            legend: SeriesLabelPosition::LowerLeft,
        },
        &success,
    )?;
    // The n - t tolerance as vertical guides would need a second series type; it is in the text.
    let _ = hlines;
    draw(
        &right,
        &Chart {
            title: "latency of served requests",
            x_label: "faulty nodes (% of n)",
            y_label: "ms",
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            y_range: None,
            hlines: Vec::new(),
            crosses: Vec::new(),
            legend: SeriesLabelPosition::UpperLeft,
        },
        &latency,
    )?;
    finish(&root, &path)
}

/// `timeouts.svg` from `timeouts.csv` and `round_cost.csv`.
pub fn timeouts(csv: &Path, costs: &Path, out: &Path) -> anyhow::Result<()> {
    let table = Table::read(csv)?;
    let cost = Table::read(costs)?;
    let path = out.join("timeouts.svg");
    let root = SVGBackend::new(&path, (1250, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(640);
    let mut configs: Vec<(String, String)> = table
        .rows
        .iter()
        .filter_map(|r| Some((r.first()?.clone(), r.get(1)?.clone())))
        .collect();
    configs.sort_by_key(|(r, ms)| (r.clone(), ms.parse::<u64>().unwrap_or(0)));
    configs.dedup();
    let mut series = Vec::new();
    let mut crosses = Vec::new();
    let top = table
        .points("n", "completion_ms", |_| true)?
        .iter()
        .map(|p| p.1)
        .fold(1.0f64, f64::max);
    for (k, (rounds, round_ms)) in configs.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let name = if rounds == "fixed" {
            format!("fixed phases of {round_ms} ms")
        } else {
            format!("tkms, round timeout {round_ms} ms")
        };
        let sel = |ok: bool| {
            move |get: &dyn Fn(&str) -> String| {
                get("rounds") == *rounds
                    && get("round_ms") == *round_ms
                    && (get("success") == "true") == ok
            }
        };
        let good = mean_by_x(&table.points("n", "completion_ms", sel(true))?);
        let bad: Vec<(f64, f64)> = table
            .points("n", "completion_ms", sel(false))?
            .into_iter()
            .map(|(x, _)| (x, top * 1.5 * 1.2f64.powi(i32::try_from(k).unwrap_or(0))))
            .collect();
        let s = Series::new(name.clone(), good, color);
        series.push(if rounds == "fixed" { s.dashed() } else { s });
        if !bad.is_empty() {
            crosses.push((format!("{name}: failed"), bad, color));
        }
    }
    draw(
        &left,
        &Chart {
            title: "DKG completion (crosses at the top: DKG failed)",
            x_label: "committee size n",
            y_label: "virtual time (ms, log)",
            x_scale: Scale::Linear,
            y_scale: Scale::Log10,
            y_range: None,
            hlines: Vec::new(),
            crosses,
            legend: SeriesLabelPosition::UpperLeft,
        },
        &series,
    )?;
    let rounds = [
        ("round1_ms", "round 1: deal + decode n-1 dealings"),
        ("round2_ms", "round 2: respond (verify n dealings)"),
        ("round3_ms", "round 3: decode responses + finalize"),
        ("round4_ms", "round 4: confirm"),
    ];
    let cost_series = rounds
        .iter()
        .enumerate()
        .map(|(k, (col, name))| {
            Ok(Series::new(
                *name,
                cost.points("n", col, |_| true)?,
                PALETTE[k],
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    draw(
        &right,
        &Chart {
            title: "modelled CPU time per round, one node",
            x_label: "committee size n (log)",
            y_label: "ms (log)",
            x_scale: Scale::Log2,
            y_scale: Scale::Log10,
            y_range: None,
            hlines: vec![
                (100.0, "100 ms".into()),
                (250.0, "250 ms".into()),
                (500.0, "500 ms".into()),
                (2000.0, "2 s (tkms default)".into()),
                (10_000.0, "10 s (drand)".into()),
            ],
            crosses: Vec::new(),
            legend: SeriesLabelPosition::LowerRight,
        },
        &cost_series,
    )?;
    finish(&root, &path)
}
