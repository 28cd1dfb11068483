//! `StopMatcher`: finds stop strings in streamed text and holds back any tail that could
//! still grow into one, so a stop string is never emitted.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released.
    pending: String,
}

/// What to do with newly generated text.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Release this text (may be empty) and keep going.
    Continue(String),
    /// A stop string matched: release this text, then finish.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_string());
        }
        self.pending.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            let released = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stopped(released);
        }
        let hold = self.longest_partial_suffix();
        let cut = self.pending.len() - hold;
        let released = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutcome::Continue(released)
    }

    /// Releases what was held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of a stop.
    fn longest_partial_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (len, _) in stop.char_indices().skip(1) {
                if len > best && self.pending.ends_with(&stop[..len]) {
                    best = len;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_partial_stop_and_cuts_at_the_full_one() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("hello E"), StopOutcome::Continue("hello ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("Dgame"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn releases_a_false_alarm() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("an E"), StopOutcome::Continue("an ".into()));
        assert_eq!(m.push("xit"), StopOutcome::Continue("Exit".into()));
        assert_eq!(m.finish(), "");
    }
}
