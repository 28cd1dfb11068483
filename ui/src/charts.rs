//! Inline SVG line charts for the GPU page: no chart library, just one `<path>` per
//! series, recomputed when its data signal changes.
//!
//! The plot stretches to its box (`preserveAspectRatio="none"`) with a non-scaling
//! stroke; labels are HTML around it, so text never stretches.

use leptos::prelude::*;

/// Plot coordinates; the SVG is scaled to whatever box CSS gives it.
const PLOT_WIDTH: f64 = 600.0;
const PLOT_HEIGHT: f64 = 160.0;
/// Horizontal grid lines, as fractions of the y range.
const GRID_FRACTIONS: [f64; 3] = [0.25, 0.5, 0.75];

/// What one chart draws.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChartData {
    /// `(t_ms, value)`, oldest first; `None` where nothing was reported.
    pub samples: Vec<(u64, Option<f64>)>,
    /// The time span drawn, in ms since the epoch; `end_ms` is the right edge.
    pub start_ms: u64,
    pub end_ms: u64,
    /// Samples further apart than this are not joined (the server or monitor was down).
    pub max_gap_ms: u64,
    pub y_scale: YScale,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum YScale {
    /// The axis ends here whatever the data (100 for a percentage).
    Fixed(f64),
    /// The axis ends at a round number above the data, and never below `at_least`.
    Auto { at_least: f64 },
}

impl Default for YScale {
    fn default() -> Self {
        YScale::Auto { at_least: 1.0 }
    }
}

impl ChartData {
    fn y_max(&self) -> f64 {
        match self.y_scale {
            YScale::Fixed(max) if max > 0.0 => max,
            YScale::Fixed(_) => 1.0,
            YScale::Auto { at_least } => {
                let data_max = self
                    .samples
                    .iter()
                    .filter_map(|&(_, value)| value)
                    .fold(0.0_f64, f64::max);
                round_up(data_max.max(at_least))
            }
        }
    }

    fn latest(&self) -> Option<f64> {
        self.samples.iter().rev().find_map(|&(_, value)| value)
    }

    /// The line's path and the area's path beneath it, in plot coordinates.
    fn paths(&self) -> (String, String) {
        let span = self.end_ms.saturating_sub(self.start_ms).max(1) as f64;
        let y_max = self.y_max();
        let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut previous_t: Option<u64> = None;
        for &(t, value) in &self.samples {
            let Some(value) = value.filter(|v| v.is_finite()) else {
                previous_t = None;
                continue;
            };
            if t < self.start_ms || t > self.end_ms {
                continue;
            }
            let joined = previous_t.is_some_and(|p| t.saturating_sub(p) <= self.max_gap_ms);
            if !joined {
                segments.push(Vec::new());
            }
            previous_t = Some(t);
            let x = (t - self.start_ms) as f64 / span * PLOT_WIDTH;
            let y = PLOT_HEIGHT - (value / y_max).clamp(0.0, 1.0) * PLOT_HEIGHT;
            if let Some(segment) = segments.last_mut() {
                segment.push((x, y));
            }
        }
        let mut line = String::new();
        let mut area = String::new();
        for segment in &segments {
            let (Some(&(first_x, _)), Some(&(last_x, _))) = (segment.first(), segment.last())
            else {
                continue;
            };
            area.push_str(&format!("M{first_x:.1},{PLOT_HEIGHT}"));
            for (i, &(x, y)) in segment.iter().enumerate() {
                line.push_str(&format!("{}{x:.1},{y:.1}", if i == 0 { 'M' } else { 'L' }));
                area.push_str(&format!("L{x:.1},{y:.1}"));
            }
            // A lone point still shows, as a short dash.
            if segment.len() == 1 {
                line.push_str(&format!("h{:.1}", PLOT_WIDTH / 200.0));
            }
            area.push_str(&format!("L{last_x:.1},{PLOT_HEIGHT}Z"));
        }
        (line, area)
    }
}

/// A titled line chart with the latest value, the y range and the time span.
#[component]
pub fn LineChart(
    title: &'static str,
    unit: &'static str,
    /// Decimals shown for values.
    decimals: usize,
    #[prop(into)] data: Signal<ChartData>,
) -> impl IntoView {
    let paths = Memo::new(move |_| data.with(ChartData::paths));
    let latest = move || {
        data.with(ChartData::latest)
            .map(|value| format!("{value:.decimals$} {unit}"))
            .unwrap_or_else(|| "—".to_owned())
    };
    let y_max = move || format!("{} {unit}", format_axis(data.with(ChartData::y_max)));
    let span = move || {
        data.with(|data| {
            format!(
                "−{}",
                format_span(data.end_ms.saturating_sub(data.start_ms))
            )
        })
    };
    let is_empty = move || paths.with(|(line, _)| line.is_empty());
    view! {
        <figure class="chart" data-testid="chart">
            <figcaption class="chart-caption">
                <span class="chart-title">{title}</span>
                <span class="chart-value">{latest}</span>
            </figcaption>
            <div class="chart-plot">
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
                                <line
                                    class="chart-gridline"
                                    x1="0"
                                    x2=PLOT_WIDTH
                                    y1=y
                                    y2=y
                                    vector-effect="non-scaling-stroke"
                                />
                            }
                        })
                        .collect_view()}
                    <path class="chart-area" d=move || paths.with(|(_, area)| area.clone()) />
                    <path
                        class="chart-line"
                        d=move || paths.with(|(line, _)| line.clone())
                        vector-effect="non-scaling-stroke"
                    />
                </svg>
                <span class="chart-y-max">{y_max}</span>
                <Show when=is_empty>
                    <span class="chart-empty">"No data yet"</span>
                </Show>
            </div>
            <div class="chart-x">
                <span>{span}</span>
                <span>"now"</span>
            </div>
        </figure>
    }
}

/// The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k that is at least `value`.
fn round_up(value: f64) -> f64 {
    if !value.is_finite() || value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10_f64.powf(value.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|&candidate| candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

/// A whole axis bound shows no decimals ("250 W"); a measured one keeps one ("79.6 GiB").
fn format_axis(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// "5 min", "24 h", "90 s".
fn format_span(ms: u64) -> String {
    let seconds = ms / 1000;
    if seconds >= 2 * 3600 {
        format!("{} h", seconds.div_ceil(3600))
    } else if seconds >= 120 {
        format!("{} min", seconds.div_ceil(60))
    } else {
        format!("{seconds} s")
    }
}
