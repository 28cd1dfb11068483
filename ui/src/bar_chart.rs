//! Inline SVG stacked bar charts for the cost dashboard, in the style of `charts.rs`: one
//! bar per bucket (a day), one coloured segment per series (a model), a legend with each
//! series' total, and the total of the whole chart in the caption. No chart library.
//!
//! The plot stretches to its box (`preserveAspectRatio="none"`); labels are HTML around
//! it, so text never stretches. Each segment has a `<title>`, shown on hover.

use leptos::prelude::*;

const PLOT_WIDTH: f64 = 600.0;
const PLOT_HEIGHT: f64 = 160.0;
const GRID_FRACTIONS: [f64; 3] = [0.25, 0.5, 0.75];
/// Share of a bucket's width left empty between bars.
const BAR_GAP: f64 = 0.2;
/// Series colours, in order; more series than colours wrap around.
const PALETTE: [&str; 9] = [
    "#4f6bed", "#12a594", "#f59e0b", "#e5484d", "#8e4ec6", "#0090ff", "#d6409f", "#46a758",
    "#8b8d98",
];

pub fn series_color(index: usize) -> &'static str {
    PALETTE
        .get(index % PALETTE.len())
        .copied()
        .unwrap_or("#4f6bed")
}

#[derive(Clone, Debug, PartialEq)]
pub struct BarSeries {
    pub name: String,
    /// One value per bucket, in bucket order.
    pub values: Vec<f64>,
}

impl BarSeries {
    pub fn total(&self) -> f64 {
        self.values.iter().filter(|v| v.is_finite()).sum()
    }
}

/// What one chart draws.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StackedBars {
    /// One label per bucket ("Nov 23"), shown on hover and under the axis.
    pub labels: Vec<String>,
    pub series: Vec<BarSeries>,
}

impl StackedBars {
    fn bucket_total(&self, bucket: usize) -> f64 {
        self.series
            .iter()
            .filter_map(|s| s.values.get(bucket))
            .filter(|v| v.is_finite() && **v > 0.0)
            .sum()
    }

    fn y_max(&self) -> f64 {
        let max = (0..self.labels.len())
            .map(|bucket| self.bucket_total(bucket))
            .fold(0.0_f64, f64::max);
        round_up(max)
    }

    pub fn total(&self) -> f64 {
        self.series.iter().map(BarSeries::total).sum()
    }

    /// `(x, y, width, height, colour, hover text)` of each segment, in plot coordinates.
    fn segments(
        &self,
        format: fn(f64) -> String,
    ) -> Vec<(f64, f64, f64, f64, &'static str, String)> {
        let buckets = self.labels.len().max(1) as f64;
        let slot = PLOT_WIDTH / buckets;
        let y_max = self.y_max();
        let mut out = Vec::new();
        for (bucket, label) in self.labels.iter().enumerate() {
            let mut stacked = 0.0;
            for (index, series) in self.series.iter().enumerate() {
                let value = series.values.get(bucket).copied().unwrap_or(0.0);
                if !value.is_finite() || value <= 0.0 {
                    continue;
                }
                let height = value / y_max * PLOT_HEIGHT;
                let y = PLOT_HEIGHT - stacked - height;
                stacked += height;
                out.push((
                    bucket as f64 * slot + slot * BAR_GAP / 2.0,
                    y,
                    slot * (1.0 - BAR_GAP),
                    height,
                    series_color(index),
                    format!("{label} · {}: {}", series.name, format(value)),
                ));
            }
        }
        out
    }
}

#[component]
pub fn StackedBarChart(
    title: &'static str,
    /// Writes a value with its unit ("$0.0012", "1,234 tokens").
    format: fn(f64) -> String,
    #[prop(into)] data: Signal<StackedBars>,
    /// For tests: `data-testid` of the figure.
    test_id: &'static str,
) -> impl IntoView {
    let segments = Memo::new(move |_| data.with(|data| data.segments(format)));
    let is_empty = move || segments.with(Vec::is_empty);
    let total = move || format(data.with(StackedBars::total));
    let y_max = move || format(data.with(StackedBars::y_max));
    let axis = move || {
        data.with(|data| {
            (
                data.labels.first().cloned().unwrap_or_default(),
                data.labels.last().cloned().unwrap_or_default(),
            )
        })
    };
    let legend = move || {
        data.with(|data| {
            data.series
                .iter()
                .enumerate()
                .filter(|(_, series)| series.total() > 0.0)
                .map(|(index, series)| {
                    view! {
                        <li class="legend-item" data-testid="legend-item">
                            <span class="legend-swatch" style:background=series_color(index)></span>
                            <span class="legend-name">{series.name.clone()}</span>
                            <span class="legend-total">{format(series.total())}</span>
                        </li>
                    }
                })
                .collect_view()
        })
    };
    view! {
        <figure class="chart bar-chart" data-testid=test_id>
            <figcaption class="chart-caption">
                <span class="chart-title">{title}</span>
                <span class="chart-value" data-testid="chart-total">{total}</span>
            </figcaption>
            <div class="chart-plot tall">
                <svg
                    viewBox=format!("0 0 {PLOT_WIDTH} {PLOT_HEIGHT}")
                    preserveAspectRatio="none"
                    role="img"
                    aria-label=title
                >
                    {GRID_FRACTIONS
                        .iter()
                        .map(|fraction| {
                            let y = PLOT_HEIGHT * fraction;
                            view! {
                                <line class="chart-gridline" x1="0" x2=PLOT_WIDTH y1=y y2=y vector-effect="non-scaling-stroke" />
                            }
                        })
                        .collect_view()}
                    {move || {
                        segments
                            .get()
                            .into_iter()
                            .map(|(x, y, width, height, color, hover)| {
                                view! {
                                    <rect class="bar" x=x y=y width=width height=height fill=color>
                                        <title>{hover}</title>
                                    </rect>
                                }
                            })
                            .collect_view()
                    }}
                </svg>
                <span class="chart-y-max">{y_max}</span>
                <Show when=is_empty>
                    <span class="chart-empty">"Nothing in this period"</span>
                </Show>
            </div>
            <div class="chart-x">
                <span>{move || axis().0}</span>
                <span>{move || axis().1}</span>
            </div>
            <ul class="legend">{legend}</ul>
        </figure>
    }
}

/// The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k that is at least `value`
/// (small costs keep their scale: $0.0004 rounds to $0.0004, not to 1).
fn round_up(value: f64) -> f64 {
    if !value.is_finite() || value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10_f64.powf(value.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|&candidate| candidate >= value * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}
