//! GPU history: a bounded ring of full-resolution readings per GPU, and the downsampler
//! that averages readings into fixed buckets (a minute by default) for the embedded store,
//! from which the UI draws the last 24 hours.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::reading::DeviceReading;

/// One point of a GPU chart: a single reading, or the mean of a bucket of readings.
/// Fields are `None` where the GPU did not report them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HistoryPoint {
    /// Milliseconds since the Unix epoch (a bucket's start, for downsampled points).
    pub t: u64,
    pub gpu_util: Option<f64>,
    pub mem_copy_util: Option<f64>,
    pub fb_used_mib: Option<f64>,
    pub fb_total_mib: Option<f64>,
    pub power_w: Option<f64>,
    pub temperature_c: Option<f64>,
    pub sm_clock_mhz: Option<f64>,
}

const FIELDS: usize = 7;

impl HistoryPoint {
    pub fn from_reading(reading: &DeviceReading) -> Self {
        Self::from_values(reading.timestamp_ms, values(reading))
    }

    fn from_values(t: u64, v: [Option<f64>; FIELDS]) -> Self {
        Self {
            t,
            gpu_util: v[0],
            mem_copy_util: v[1],
            fb_used_mib: v[2],
            fb_total_mib: v[3],
            power_w: v[4],
            temperature_c: v[5],
            sm_clock_mhz: v[6],
        }
    }
}

fn values(r: &DeviceReading) -> [Option<f64>; FIELDS] {
    [
        r.gpu_util().map(f64::from),
        r.mem_copy_util().map(f64::from),
        r.fb_used_mib(),
        r.fb_total_mib(),
        r.power_w(),
        r.temperature_c.map(f64::from),
        r.sm_clock_mhz.map(f64::from),
    ]
}

/// The last `capacity` items, oldest first.
#[derive(Debug)]
pub struct Ring<T> {
    capacity: usize,
    items: VecDeque<T>,
}

impl<T> Ring<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            items: VecDeque::with_capacity(capacity.max(1)),
        }
    }

    pub fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    pub fn latest(&self) -> Option<&T> {
        self.items.back()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }
}

/// Averages one GPU's readings into buckets of `bucket_ms`, aligned to the epoch.
#[derive(Debug)]
pub struct Downsampler {
    bucket_ms: u64,
    current: Option<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    start: u64,
    sums: [f64; FIELDS],
    counts: [u32; FIELDS],
}

impl Downsampler {
    pub fn new(bucket_ms: u64) -> Self {
        Self {
            bucket_ms: bucket_ms.max(1),
            current: None,
        }
    }

    /// Adds a reading; returns the previous bucket's point once a reading falls past it.
    pub fn push(&mut self, reading: &DeviceReading) -> Option<HistoryPoint> {
        let start = reading.timestamp_ms - reading.timestamp_ms % self.bucket_ms;
        let finished = match &self.current {
            Some(bucket) if bucket.start != start => self.flush(),
            _ => None,
        };
        let bucket = self.current.get_or_insert(Bucket {
            start,
            sums: [0.0; FIELDS],
            counts: [0; FIELDS],
        });
        for (i, value) in values(reading).into_iter().enumerate() {
            if let Some(value) = value {
                bucket.sums[i] += value;
                bucket.counts[i] += 1;
            }
        }
        finished
    }

    /// The point of the bucket being filled, if any, which then starts afresh.
    pub fn flush(&mut self) -> Option<HistoryPoint> {
        let bucket = self.current.take()?;
        let mut means = [None; FIELDS];
        for (i, mean) in means.iter_mut().enumerate() {
            if bucket.counts[i] > 0 {
                *mean = Some(bucket.sums[i] / f64::from(bucket.counts[i]));
            }
        }
        Some(HistoryPoint::from_values(bucket.start, means))
    }
}
