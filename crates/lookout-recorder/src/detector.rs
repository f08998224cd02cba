//! Change detection for one stream (one camera labelled by one model): pure and deterministic,
//! no I/O, no wall clock. The caller passes the time (`now`, any monotonic [`Duration`]).
//!
//! Predictions reach the recorder out of order when predictor replicas share a camera, so a
//! [`Detector`] first restores frame order in a bounded **reorder window**, then decides each
//! frame in sequence order:
//!
//! - A prediction whose sequence is the next expected one is decided at once, followed by any
//!   consecutive ones already waiting in the window.
//! - Others wait. When the next expected sequence has been missing for `window_timeout`, or
//!   the window holds more than `window_frames` predictions, the gap is skipped: decision goes
//!   on from the lowest waiting sequence. A camera restart (its sequences jump far ahead) is a
//!   gap like any other. A new stream has no expected sequence yet: it starts, the same way,
//!   from the lowest sequence received.
//! - A prediction at or below the last decided sequence, or already waiting, is ignored, so
//!   re-delivered predictions change nothing, unless it is [`RESTART_DISTANCE`] or more below
//!   it: then it belongs to a new run of the camera (restarted with its clock set back, or
//!   after a sequence forged far ahead), and the stream starts again as a new one would, from
//!   the lowest sequence received, keeping its stable label (a [`SkipReason::Restart`]). One
//!   bad sequence cannot silence a camera for good.
//!
//! Deciding a frame: a **run** is a series of consecutive decided frames with the same top-1
//! label, each scoring at least `min_score`, different from the current **stable** label. When
//! a run reaches `min_frames` frames, a [`Change`] is recorded at the run's first frame
//! (previous = the stable label, or none for a stream's first label) and the run's label becomes
//! the stable one. A frame with the stable label, a low score or no label ends the run, and so
//! does a skipped gap (the frames are no longer consecutive).
//!
//! A prediction of a frame the predictor **skipped** (too old, undecodable; see
//! `Prediction.skipped`) fills its place in the sequence without being evidence either way:
//! the frame is decided at once, and a run goes on over it as if it were not there.
//!
//! The outcome depends only on the predictions and on which gaps were skipped; with every
//! prediction arriving within the window (fewer than `window_frames` positions and less than
//! `window_timeout` late), it is the same whatever the arrival order and duplicates.

use std::{collections::BTreeMap, time::Duration};

/// How far below the last decided sequence a prediction must be to start a new run of the
/// camera rather than be a late one. The camera numbers frames `start_unix_millis * 1000 +
/// index`, so this is one second of start time, or more than nine hours of frames at 30 fps:
/// far beyond any re-delivery or reordering.
pub const RESTART_DISTANCE: u64 = 1_000_000;

/// A label as change detection sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// Index into the model's labels.
    pub class_id: u32,
    /// Class name; labels are compared by name.
    pub name: String,
    /// Probability in [0, 1].
    pub score: f32,
}

/// One prediction reduced to what change detection needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The frame's sequence number.
    pub sequence: u64,
    /// The frame's capture time, Unix milliseconds.
    pub capture_time_ms: i64,
    /// The best label, if the prediction had any.
    pub top1: Option<Label>,
    /// The predictor did not label this frame: no evidence for or against any label.
    pub skipped: bool,
}

/// A stable change of a stream's label.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The first frame showing the new label.
    pub sequence: u64,
    /// That frame's capture time, Unix milliseconds.
    pub capture_time_ms: i64,
    /// The stable label before, `None` for the stream's first label.
    pub previous: Option<Label>,
    /// The new label, with its score at `sequence`.
    pub current: Label,
}

/// Frames that may become the next change.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Sequence of the run's first frame.
    pub start: u64,
    /// Capture time of the run's first frame, Unix milliseconds.
    pub start_capture_ms: i64,
    /// The run's label, with its score at the first frame.
    pub label: Label,
    /// Frames in the run so far.
    pub length: u32,
}

/// What a stream's detector must remember besides its window; persisted with each decision.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamState {
    /// The last decided sequence: predictions at or below it are ignored.
    pub last_decided: Option<u64>,
    /// Capture time of the last decided frame, Unix milliseconds.
    pub last_capture_ms: Option<i64>,
    /// The current stable label.
    pub stable: Option<Label>,
    /// The run in progress.
    pub run: Option<Run>,
}

/// Change detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// Consecutive frames a new label must hold before it is a change (at least 1).
    pub min_frames: u32,
    /// Lowest top-1 score that counts.
    pub min_score: f32,
    /// Predictions the reorder window holds before a gap is skipped.
    pub window_frames: usize,
    /// How long a missing sequence is waited for before the gap is skipped.
    pub window_timeout: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            min_frames: 3,
            min_score: 0.25,
            window_frames: 256,
            window_timeout: Duration::from_secs(3),
        }
    }
}

/// Why a prediction was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Its sequence is at or below the last decided one (a re-delivery, or later than the
    /// window allowed).
    AlreadyDecided,
    /// The same sequence is already waiting in the window (a re-delivery).
    AlreadyWaiting,
}

/// Why a gap was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The window held more than `window_frames` predictions.
    WindowFull,
    /// The missing sequence did not come within `window_timeout`.
    Timeout,
    /// A prediction came [`RESTART_DISTANCE`] or more below the last decided sequence: a new
    /// run of the camera starts (`to` is below `from`).
    Restart,
}

/// A gap of sequences given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    /// First missing sequence.
    pub from: u64,
    /// The sequence decision went on from.
    pub to: u64,
    /// Why.
    pub reason: SkipReason,
}

/// What one call of [`Detector::offer`] or [`Detector::tick`] did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// Set when the offered prediction was ignored (nothing changed).
    pub ignored: Option<Ignored>,
    /// Frames decided.
    pub decided: usize,
    /// Changes recorded, in sequence order.
    pub changes: Vec<Change>,
    /// Gaps skipped.
    pub skips: Vec<Skip>,
}

impl Outcome {
    /// Whether the detector's state or window changed.
    pub fn changed_state(&self) -> bool {
        self.ignored.is_none()
    }
}

/// Change detection for one stream.
#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectorConfig,
    state: StreamState,
    window: BTreeMap<u64, Observation>,
    /// Since when the head of a non-empty window has been waiting for the next sequence.
    waiting_since: Option<Duration>,
}

impl Detector {
    /// A stream with no history.
    pub fn new(config: DetectorConfig) -> Self {
        Self::restore(config, StreamState::default(), [], Duration::ZERO)
    }

    /// A stream restored from its persisted state and waiting predictions; a missing sequence
    /// is waited for from `now` on (a restart re-delivers what followed it).
    pub fn restore(
        config: DetectorConfig,
        state: StreamState,
        window: impl IntoIterator<Item = Observation>,
        now: Duration,
    ) -> Self {
        let window: BTreeMap<u64, Observation> =
            window.into_iter().map(|o| (o.sequence, o)).collect();
        let waiting_since = (!window.is_empty()).then_some(now);
        Self { config, state, window, waiting_since }
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The persisted part of the state.
    pub fn state(&self) -> &StreamState {
        &self.state
    }

    /// Predictions waiting in the window, in sequence order.
    pub fn waiting(&self) -> impl Iterator<Item = &Observation> {
        self.window.values()
    }

    /// How many predictions wait in the window.
    pub fn waiting_len(&self) -> usize {
        self.window.len()
    }

    /// Whether `sequence` waits in the window.
    pub fn is_waiting(&self, sequence: u64) -> bool {
        self.window.contains_key(&sequence)
    }

    /// The lowest frame sequence that may still become a change's frame: frames below it will
    /// never be needed as snapshots. `None` when any frame may be.
    pub fn needed_from(&self) -> Option<u64> {
        if let Some(run) = &self.state.run {
            return Some(run.start);
        }
        // Before its first decision a stream may still start below anything received so far.
        self.state.last_decided.map(|d| d.saturating_add(1))
    }

    /// The capture time of the oldest frame this stream may still need, Unix milliseconds.
    pub fn needed_since_ms(&self) -> Option<i64> {
        let run = self.state.run.as_ref().map(|r| r.start_capture_ms);
        let waiting = self.window.values().map(|o| o.capture_time_ms).min();
        [run, self.state.last_capture_ms, waiting].into_iter().flatten().min()
    }

    /// Offers one prediction and decides what can be decided.
    pub fn offer(&mut self, observation: Observation, now: Duration) -> Outcome {
        let mut out = Outcome::default();
        if let Some(decided) = self.state.last_decided
            && observation.sequence <= decided
        {
            if decided - observation.sequence < RESTART_DISTANCE {
                out.ignored = Some(Ignored::AlreadyDecided);
                return out;
            }
            // A new run: start again like a new stream, the stable label kept.
            out.skips.push(Skip {
                from: decided.saturating_add(1),
                to: observation.sequence,
                reason: SkipReason::Restart,
            });
            self.state.last_decided = None;
            self.state.run = None;
            self.waiting_since = None;
        }
        if self.window.contains_key(&observation.sequence) {
            out.ignored = Some(Ignored::AlreadyWaiting);
            return out;
        }
        self.window.insert(observation.sequence, observation);
        self.drain(now, &mut out);
        out
    }

    /// Decides what the passing of time allows (skips a gap that waited too long).
    pub fn tick(&mut self, now: Duration) -> Outcome {
        let mut out = Outcome::default();
        self.drain(now, &mut out);
        out
    }

    fn next_expected(&self) -> Option<u64> {
        self.state.last_decided.map(|d| d.saturating_add(1))
    }

    fn drain(&mut self, now: Duration, out: &mut Outcome) {
        let mut progressed = false;
        loop {
            while let Some(next) = self.next_expected() {
                let Some(observation) = self.window.remove(&next) else { break };
                self.decide(observation, out);
                progressed = true;
            }
            let Some(&head) = self.window.keys().next() else {
                self.waiting_since = None;
                return;
            };
            // The wait for the next sequence starts when the head of the window changes.
            if std::mem::take(&mut progressed) || self.waiting_since.is_none() {
                self.waiting_since = Some(now);
            }
            let waited = now.saturating_sub(self.waiting_since.unwrap_or(now));
            let reason = if self.window.len() > self.config.window_frames {
                SkipReason::WindowFull
            } else if waited >= self.config.window_timeout {
                SkipReason::Timeout
            } else {
                return;
            };
            if let Some(from) = self.next_expected() {
                // Frames on either side of a gap are not consecutive: the run ends.
                out.skips.push(Skip { from, to: head, reason });
                self.state.run = None;
            }
            if let Some(observation) = self.window.remove(&head) {
                self.decide(observation, out);
            }
            progressed = true;
        }
    }

    fn decide(&mut self, observation: Observation, out: &mut Outcome) {
        debug_assert!(self.state.last_decided.is_none_or(|d| observation.sequence > d));
        self.state.last_decided = Some(observation.sequence);
        self.state.last_capture_ms = Some(observation.capture_time_ms);
        out.decided += 1;
        if observation.skipped {
            return;
        }
        let top = match observation.top1 {
            Some(label) if label.score >= self.config.min_score => label,
            _ => {
                self.state.run = None;
                return;
            }
        };
        if self.state.stable.as_ref().is_some_and(|s| s.name == top.name) {
            self.state.run = None;
            return;
        }
        let run = match self.state.run.take() {
            Some(mut run) if run.label.name == top.name => {
                run.length += 1;
                run
            }
            _ => Run {
                start: observation.sequence,
                start_capture_ms: observation.capture_time_ms,
                label: top,
                length: 1,
            },
        };
        if run.length >= self.config.min_frames.max(1) {
            out.changes.push(Change {
                sequence: run.start,
                capture_time_ms: run.start_capture_ms,
                previous: self.state.stable.take(),
                current: run.label.clone(),
            });
            self.state.stable = Some(run.label);
        } else {
            self.state.run = Some(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BASE: u64 = 1_763_000_000_000_000;
    const NOW: Duration = Duration::ZERO;
    const LATER: Duration = Duration::from_secs(3600);

    fn config() -> DetectorConfig {
        DetectorConfig {
            min_frames: 3,
            min_score: 0.3,
            window_frames: 16,
            window_timeout: Duration::from_secs(2),
        }
    }

    fn obs(i: u64, label: &str, score: f32) -> Observation {
        Observation {
            sequence: BASE + i,
            capture_time_ms: 1_000 + i as i64,
            top1: (!label.is_empty()).then(|| Label {
                class_id: label.bytes().map(u32::from).sum(),
                name: label.to_owned(),
                score,
            }),
            skipped: false,
        }
    }

    /// Labels of a script: one character per frame; `.` is a prediction without label, `_` a
    /// skipped frame and a lowercase letter is a low score.
    fn script(s: &str) -> Vec<Observation> {
        s.chars()
            .enumerate()
            .map(|(i, c)| match c {
                '.' => obs(i as u64, "", 0.0),
                '_' => Observation { skipped: true, ..obs(i as u64, "", 0.0) },
                c if c.is_ascii_lowercase() => {
                    obs(i as u64, &c.to_ascii_uppercase().to_string(), 0.1)
                }
                c => obs(i as u64, &c.to_string(), 0.5 + i as f32 / 1000.0),
            })
            .collect()
    }

    /// Feeds observations in the given order with no time passing, then lets time pass.
    fn run(config: DetectorConfig, arrivals: &[Observation]) -> Vec<Change> {
        let mut d = Detector::new(config);
        let mut changes = Vec::new();
        for o in arrivals {
            changes.extend(d.offer(o.clone(), NOW).changes);
        }
        changes.extend(d.tick(LATER).changes);
        changes
    }

    fn summary(changes: &[Change]) -> Vec<(u64, Option<String>, String)> {
        changes
            .iter()
            .map(|c| {
                (
                    c.sequence - BASE,
                    c.previous.as_ref().map(|l| l.name.clone()),
                    c.current.name.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn a_scripted_sequence_gives_the_expected_changes() {
        // A A A B B A B B B . C C c C C C A A A
        let changes = run(config(), &script("AAABBABBB.CCcCCCAAA"));
        assert_eq!(
            summary(&changes),
            vec![
                (0, None, "A".into()),
                (6, Some("A".into()), "B".into()),
                (13, Some("B".into()), "C".into()),
                (16, Some("C".into()), "A".into()),
            ]
        );
        // The change carries its first frame's score and capture time; previous is the
        // stable label as it was recorded.
        assert_eq!(changes[1].current.score, 0.5 + 6.0 / 1000.0);
        assert_eq!(changes[1].capture_time_ms, 1_006);
        assert_eq!(changes[1].previous, Some(changes[0].current.clone()));
    }

    #[test]
    fn a_skipped_frame_is_no_evidence_and_leaves_no_gap() {
        // A skipped frame inside a run neither ends it nor counts towards it.
        let changes = run(config(), &script("AAAB_B_BA"));
        assert_eq!(
            summary(&changes),
            vec![(0, None, "A".into()), (3, Some("A".into()), "B".into())]
        );
        // Arriving last, a skipped prediction completes the sequence: nothing waits for it.
        let arrivals = script("AAA_BBB");
        let mut d = Detector::new(config());
        let mut changes = d.offer(arrivals[0].clone(), NOW).changes;
        changes.extend(d.tick(LATER).changes); // the stream starts
        for i in [1, 2, 4, 5, 6, 3] {
            changes.extend(d.offer(arrivals[i].clone(), LATER).changes);
        }
        assert_eq!(d.waiting_len(), 0, "every frame decided without a timeout");
        assert_eq!(
            summary(&changes),
            vec![(0, None, "A".into()), (4, Some("A".into()), "B".into())]
        );
    }

    #[test]
    fn a_short_blip_is_not_a_change() {
        assert_eq!(summary(&run(config(), &script("AAAABBAAAA"))), vec![(0, None, "A".into())]);
        assert_eq!(summary(&run(config(), &script("AAAAbbbbbAA"))), vec![(0, None, "A".into())]);
    }

    #[test]
    fn min_frames_one_changes_at_once() {
        let c = DetectorConfig { min_frames: 1, ..config() };
        assert_eq!(
            summary(&run(c, &script("AB.A"))),
            vec![
                (0, None, "A".into()),
                (1, Some("A".into()), "B".into()),
                (3, Some("B".into()), "A".into())
            ]
        );
    }

    #[test]
    fn in_order_predictions_are_decided_at_once_after_the_start() {
        let mut d = Detector::new(config());
        let frames = script("AAAAAB");
        // A new stream waits for its lowest sequence until the timeout…
        assert_eq!(d.offer(frames[0].clone(), NOW).decided, 0);
        let out = d.tick(Duration::from_secs(2));
        assert_eq!(out.decided, 1);
        assert!(out.skips.is_empty(), "starting a stream is not a gap");
        // …then each next sequence is decided when it comes.
        for f in &frames[1..] {
            assert_eq!(d.offer(f.clone(), Duration::from_secs(2)).decided, 1);
        }
        assert_eq!(d.waiting_len(), 0);
    }

    #[test]
    fn a_missing_sequence_is_waited_for_then_skipped() {
        let mut d = Detector::new(config());
        let f = script("AAAAAAAA");
        d.offer(f[0].clone(), NOW);
        d.tick(Duration::from_secs(5));
        d.offer(f[1].clone(), Duration::from_secs(5));
        // 2 is missing: 3 and 4 wait.
        assert_eq!(d.offer(f[3].clone(), Duration::from_secs(5)).decided, 0);
        assert_eq!(d.offer(f[4].clone(), Duration::from_secs(6)).decided, 0);
        assert_eq!(d.tick(Duration::from_millis(6999)).decided, 0);
        let out = d.tick(Duration::from_secs(7));
        assert_eq!(out.decided, 2);
        assert_eq!(
            out.skips,
            vec![Skip { from: BASE + 2, to: BASE + 3, reason: SkipReason::Timeout }]
        );
        // The late prediction is ignored.
        assert_eq!(
            d.offer(f[2].clone(), Duration::from_secs(8)).ignored,
            Some(Ignored::AlreadyDecided)
        );
    }

    #[test]
    fn a_full_window_skips_the_gap() {
        let c = DetectorConfig { window_frames: 3, ..config() };
        let mut d = Detector::new(c);
        let f = script("AAAAAAAAAA");
        d.offer(f[0].clone(), NOW);
        d.tick(LATER);
        for f in &f[2..5] {
            assert_eq!(d.offer(f.clone(), LATER).decided, 0);
        }
        let out = d.offer(f[5].clone(), LATER);
        assert_eq!(out.decided, 4);
        assert_eq!(out.skips[0].reason, SkipReason::WindowFull);
    }

    #[test]
    fn a_gap_ends_the_run() {
        let mut d = Detector::new(config());
        let f = script("AAAABBBB");
        for o in &f[..5] {
            d.offer(o.clone(), NOW);
        }
        d.tick(LATER); // start: A A A A B decided
        // 5 is lost; 6 and 7 (B) come after the gap: the run B(4) is broken.
        d.offer(f[6].clone(), LATER);
        d.offer(f[7].clone(), LATER);
        let out = d.tick(LATER * 2);
        assert_eq!(out.skips.len(), 1);
        assert!(out.changes.is_empty(), "B held only 2 consecutive frames after the gap");
        assert_eq!(d.state().run.as_ref().map(|r| r.start), Some(BASE + 6));
    }

    #[test]
    fn a_sequence_far_below_starts_a_new_run_and_keeps_the_stable_label() {
        let c = DetectorConfig { min_frames: 2, ..config() };
        let mut d = Detector::new(c);
        let mut changes = Vec::new();
        // A forged prediction far ahead is decided once the gap times out…
        let forged = Observation { sequence: u64::MAX - 1, ..obs(0, "X", 0.9) };
        for o in [obs(0, "A", 0.9), obs(1, "A", 0.9)] {
            changes.extend(d.offer(o, NOW).changes);
        }
        changes.extend(d.tick(LATER).changes);
        changes.extend(d.offer(forged, LATER).changes);
        changes.extend(d.tick(LATER * 2).changes);
        assert_eq!(d.state().last_decided, Some(u64::MAX - 1));
        // …a late prediction just below is still a late one…
        let late = Observation { sequence: u64::MAX - 5, ..obs(0, "A", 0.9) };
        assert_eq!(d.offer(late, LATER * 2).ignored, Some(Ignored::AlreadyDecided));
        // …but the camera's real sequences, far below, are a new run, not silence.
        let out = d.offer(obs(2, "B", 0.9), LATER * 2);
        assert_eq!(out.ignored, None);
        assert_eq!(out.skips[0].reason, SkipReason::Restart);
        changes.extend(out.changes);
        changes.extend(d.tick(LATER * 3).changes);
        changes.extend(d.offer(obs(3, "B", 0.9), LATER * 3).changes);
        assert_eq!(
            summary(&changes),
            vec![(0, None, "A".into()), (2, Some("A".into()), "B".into())],
            "the forged X was one frame, never a change; B is, against the kept A"
        );
        assert_eq!(d.state().last_decided, Some(BASE + 3));
    }

    #[test]
    fn a_camera_restart_is_accepted_after_the_timeout() {
        let mut d = Detector::new(config());
        let first = script("AAAA");
        for o in &first {
            d.offer(o.clone(), NOW);
        }
        d.tick(Duration::from_secs(2));
        // The camera restarts: sequences jump by far more than the window.
        let restart: Vec<Observation> = script("BBBB")
            .into_iter()
            .map(|mut o| {
                o.sequence += 5_000_000;
                o
            })
            .collect();
        // Out of order within the new run: still deterministic.
        for i in [1, 0, 3, 2] {
            d.offer(restart[i].clone(), Duration::from_secs(3));
        }
        let out = d.tick(Duration::from_secs(5));
        assert_eq!(out.decided, 4);
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].sequence, restart[0].sequence);
    }

    #[test]
    fn needed_from_follows_the_run() {
        let mut d = Detector::new(config());
        assert_eq!(d.needed_from(), None);
        for o in script("AAAB") {
            d.offer(o, NOW);
        }
        d.tick(LATER);
        assert_eq!(d.needed_from(), Some(BASE + 3), "B may become a change at 3");
        d.offer(script("AAABA").pop().unwrap(), LATER);
        assert_eq!(d.needed_from(), Some(BASE + 5));
    }

    /// A labelled stream with runs of varying length, so that some runs become changes.
    fn labels() -> impl Strategy<Value = Vec<Observation>> {
        prop::collection::vec((0..4u8, 1..7usize, 0..10u8), 1..40).prop_map(|runs| {
            let mut out = Vec::new();
            for (label, len, score) in runs {
                for _ in 0..len {
                    let i = out.len() as u64;
                    let name = ["cat", "dog", "cup", ""][label as usize];
                    out.push(obs(i, name, f32::from(score) / 10.0));
                }
            }
            out
        })
    }

    /// Arrival order: each prediction is delayed by less than `window` positions.
    fn shuffled(observations: &[Observation], delays: &[u8], window: usize) -> Vec<Observation> {
        let mut keyed: Vec<(usize, usize, Observation)> = observations
            .iter()
            .enumerate()
            .map(|(i, o)| (i + delays[i % delays.len()] as usize % window, i, o.clone()))
            .collect();
        keyed.sort_by_key(|(k, i, _)| (*k, *i));
        keyed.into_iter().map(|(_, _, o)| o).collect()
    }

    proptest! {
        #[test]
        fn arrival_order_within_the_window_does_not_matter(
            observations in labels(),
            delays in prop::collection::vec(any::<u8>(), 1..64),
        ) {
            let c = config();
            let expected = run(c, &observations);
            let arrivals = shuffled(&observations, &delays, c.window_frames / 2);
            prop_assert_eq!(run(c, &arrivals), expected);
        }

        #[test]
        fn duplicates_change_nothing(
            observations in labels(),
            delays in prop::collection::vec(any::<u8>(), 1..64),
        ) {
            let c = config();
            let expected = run(c, &observations);
            // Each prediction twice, both copies shuffled within the window.
            let doubled: Vec<Observation> =
                observations.iter().flat_map(|o| [o.clone(), o.clone()]).collect();
            let arrivals = shuffled(&doubled, &delays, c.window_frames / 2);
            let changes = run(c, &arrivals);
            prop_assert_eq!(changes, expected);
        }

        #[test]
        fn three_interleaved_publishers_give_the_same_changes(
            observations in labels(),
            lags in prop::collection::vec(0..6u64, 3),
            jitter in prop::collection::vec(0..3u64, 1..32),
        ) {
            // Publisher k handles every third frame; it publishes frame i at time
            // i + lag[k] + jitter, so the three streams interleave.
            let c = config();
            let expected = run(c, &observations);
            let mut arrivals: Vec<(u64, u64, Observation)> = observations
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let t = i as u64 + lags[i % 3] + jitter[i % jitter.len()];
                    (t, o.sequence, o.clone())
                })
                .collect();
            arrivals.sort_by_key(|(t, s, _)| (*t, *s));
            let arrivals: Vec<Observation> = arrivals.into_iter().map(|(_, _, o)| o).collect();
            prop_assert_eq!(run(c, &arrivals), expected);
        }

        #[test]
        fn a_restored_detector_goes_on_as_if_nothing_happened(
            observations in labels(),
            delays in prop::collection::vec(any::<u8>(), 1..64),
            cut in any::<prop::sample::Index>(),
        ) {
            let c = config();
            let expected = run(c, &observations);
            let arrivals = shuffled(&observations, &delays, c.window_frames / 2);
            let cut = cut.index(arrivals.len() + 1);
            let mut d = Detector::new(c);
            let mut changes = Vec::new();
            for o in &arrivals[..cut] {
                changes.extend(d.offer(o.clone(), NOW).changes);
            }
            // Crash: only the persisted state and the waiting predictions survive, and the
            // predictions after the cut (and some before it) are delivered again.
            let mut d = Detector::restore(c, d.state().clone(), d.waiting().cloned().collect::<Vec<_>>(), NOW);
            let replay_from = cut.saturating_sub(5);
            for o in &arrivals[replay_from..] {
                changes.extend(d.offer(o.clone(), NOW).changes);
            }
            changes.extend(d.tick(LATER).changes);
            prop_assert_eq!(changes, expected);
        }
    }
}
