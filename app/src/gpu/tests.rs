//! The rendering of `/metrics` and history from samples recorded on a real H100 with
//! `agentbox gpu --samples 10` (`tests/data/nvml/h100_recording.json`), so CI checks the
//! DCGM text and the downsampling without a GPU.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use super::dcgm::{self, HostLabels};
use super::history::{Downsampler, HistoryPoint, Ring};
use super::reading::{DeviceReading, MIB};
use super::{Recording, load_recording};

const H100: &str = include_str!("../../../tests/data/nvml/h100_recording.json");

fn recording() -> Recording {
    load_recording(H100).unwrap()
}

fn host() -> HostLabels {
    HostLabels {
        hostname: "gpu-node-1".into(),
        pod: Some("agentbox-0".into()),
        namespace: Some("ai".into()),
        container: None,
    }
}

fn render(recording: &Recording, tick: usize, own_pid: u32) -> String {
    let latest: Vec<Option<&DeviceReading>> = recording.samples[tick].iter().map(Some).collect();
    let mut out = String::new();
    dcgm::render(&mut out, &recording.gpus, &latest, &host(), own_pid);
    out
}

/// The value of the series `name{labels...}` whose labels contain `label`.
fn value(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_recording_is_a_real_gpu_under_load() {
    let r = recording();
    assert!(!r.gpus.is_empty());
    assert!(r.samples.len() >= 5);
    let gpu = &r.gpus[0];
    assert!(gpu.uuid.starts_with("GPU-"), "{}", gpu.uuid);
    assert!(gpu.name.contains("H100"), "{}", gpu.name);
    let busy = r
        .samples
        .iter()
        .filter(|s| s[0].gpu_util() > Some(50))
        .count();
    assert!(busy > 0, "no sample under load");
    assert!(r.samples.iter().all(|s| !s[0].processes.is_empty()));
}

#[test]
fn metrics_use_dcgm_names_labels_and_units() {
    let r = recording();
    let gpu = &r.gpus[0];
    let last = r.samples.len() - 1;
    let reading = &r.samples[last][0];
    let text = render(&r, last, 0);
    assert!(text.contains("\nagentbox_gpu_available 1\n"), "{text}");
    let labels = format!(
        "gpu=\"0\",UUID=\"{}\",pci_bus_id=\"{}\",device=\"{}\",modelName=\"{}\",Hostname=\"gpu-node-1\",namespace=\"ai\",pod=\"agentbox-0\"",
        gpu.uuid,
        gpu.pci_bus_id,
        gpu.device_label(),
        gpu.name
    );
    let memory = reading.memory.as_ref().unwrap();
    let expected = [
        (
            "DCGM_FI_DEV_GPU_UTIL",
            f64::from(reading.gpu_util().unwrap()),
        ),
        (
            "DCGM_FI_DEV_MEM_COPY_UTIL",
            f64::from(reading.mem_copy_util().unwrap()),
        ),
        ("DCGM_FI_DEV_FB_USED", (memory.used as f64 / MIB).ceil()),
        ("DCGM_FI_DEV_FB_FREE", (memory.free as f64 / MIB).ceil()),
        (
            "DCGM_FI_DEV_GPU_TEMP",
            f64::from(reading.temperature_c.unwrap()),
        ),
        (
            "DCGM_FI_DEV_POWER_USAGE",
            f64::from(reading.power_mw.unwrap()) / 1000.0,
        ),
        (
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            reading.energy_mj.unwrap() as f64,
        ),
        (
            "DCGM_FI_DEV_SM_CLOCK",
            f64::from(reading.sm_clock_mhz.unwrap()),
        ),
        (
            "DCGM_FI_DEV_MEM_CLOCK",
            f64::from(reading.mem_clock_mhz.unwrap()),
        ),
        (
            "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
            f64::from(reading.pcie_tx_kbps.unwrap()),
        ),
        (
            "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",
            f64::from(reading.pcie_rx_kbps.unwrap()),
        ),
        ("DCGM_FI_DEV_XID_ERRORS", reading.last_xid.unwrap() as f64),
    ];
    for (name, want) in expected {
        let line = format!("{name}{{{labels}}} ");
        let got = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no `{line}` in\n{text}"));
        assert_eq!(got.parse::<f64>().unwrap(), want, "{name}");
        assert_eq!(
            text.matches(&format!("# TYPE {name} ")).count(),
            1,
            "{name}"
        );
    }
    assert!(text.contains("# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter"));
    // Used and free add up to the total less what the driver reserves (each rounded up).
    let used = value(&text, "DCGM_FI_DEV_FB_USED", "").unwrap();
    let free = value(&text, "DCGM_FI_DEV_FB_FREE", "").unwrap();
    let total = ((memory.total - memory.reserved) as f64 / MIB).round();
    assert!(
        (used + free - total).abs() <= 1.0,
        "{used} + {free} vs {total}"
    );
}

#[test]
fn every_line_is_valid_exposition_text() {
    let r = recording();
    let text = render(&r, 0, 0);
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, number) = line.rsplit_once(' ').unwrap();
        assert!(number.parse::<f64>().is_ok(), "{line}");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "{line}");
        }
    }
}

#[test]
fn processes_are_attributed_and_agentbox_is_marked() {
    let r = recording();
    let process = &r.samples[0][0].processes[0];
    let pid = process.info.pid;
    let text = render(&r, 0, 0);
    let other = format!("pid=\"{pid}\"");
    let line = text
        .lines()
        .find(|l| l.starts_with("agentbox_gpu_process_memory_used_bytes{") && l.contains(&other))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("owner=\"other\""), "{line}");
    let text = render(&r, 0, pid);
    assert!(
        text.lines()
            .any(|l| l.contains(&other) && l.contains("owner=\"agentbox\"")),
        "{text}"
    );
}

#[test]
fn fields_a_gpu_does_not_report_are_left_out() {
    let mut r = recording();
    r.samples[0][0].power_mw = None;
    r.samples[0][0].last_xid = None;
    let text = render(&r, 0, 0);
    assert!(!text.contains("DCGM_FI_DEV_POWER_USAGE"), "{text}");
    assert!(!text.contains("DCGM_FI_DEV_XID_ERRORS"), "{text}");
    assert!(text.contains("DCGM_FI_DEV_GPU_UTIL{"), "{text}");
}

#[test]
fn label_values_are_escaped() {
    let mut r = recording();
    r.gpus[0].name = "odd \"GPU\"\\name\n".into();
    let text = render(&r, 0, 0);
    assert!(
        text.contains(r#"modelName="odd \"GPU\"\\name\n""#),
        "{text}"
    );
}

#[test]
fn without_a_gpu_only_availability_is_reported() {
    let mut out = String::new();
    dcgm::render_unavailable(&mut out);
    let series: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(series, ["agentbox_gpu_available 0"]);
}

#[test]
fn downsampling_averages_each_bucket_of_recorded_samples() {
    let r = recording();
    let readings: Vec<&DeviceReading> = r.samples.iter().map(|s| &s[0]).collect();
    let bucket_ms = 3000;
    let mut downsampler = Downsampler::new(bucket_ms);
    let mut points: Vec<HistoryPoint> = readings
        .iter()
        .filter_map(|r| downsampler.push(r))
        .collect();
    points.extend(downsampler.flush());
    let mut starts: Vec<u64> = readings
        .iter()
        .map(|r| r.timestamp_ms - r.timestamp_ms % bucket_ms)
        .collect();
    starts.dedup();
    assert_eq!(points.iter().map(|p| p.t).collect::<Vec<_>>(), starts);
    for point in &points {
        let members: Vec<&&DeviceReading> = readings
            .iter()
            .filter(|r| r.timestamp_ms - r.timestamp_ms % bucket_ms == point.t)
            .collect();
        let mean = |f: fn(&DeviceReading) -> f64| {
            members.iter().map(|r| f(r)).sum::<f64>() / members.len() as f64
        };
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        assert!(close(
            point.gpu_util,
            mean(|r| f64::from(r.gpu_util().unwrap()))
        ));
        assert!(close(point.power_w, mean(|r| r.power_w().unwrap())));
        assert!(close(point.fb_used_mib, mean(|r| r.fb_used_mib().unwrap())));
        assert!(close(
            point.temperature_c,
            mean(|r| f64::from(r.temperature_c.unwrap()))
        ));
    }
    assert!(downsampler.flush().is_none());
}

#[test]
fn a_point_from_one_reading_carries_its_values() {
    let r = recording();
    let reading = &r.samples[0][0];
    let point = HistoryPoint::from_reading(reading);
    assert_eq!(point.t, reading.timestamp_ms);
    assert_eq!(point.gpu_util, reading.gpu_util().map(f64::from));
    assert_eq!(point.fb_total_mib, reading.fb_total_mib());
}

#[test]
fn the_ring_keeps_the_newest_items() {
    let mut ring = Ring::new(3);
    for i in 0..10 {
        ring.push(i);
    }
    assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [7, 8, 9]);
    assert_eq!(ring.latest(), Some(&9));
}
