//! The rule engine: per rule and camera, episodes over predictions and changes.
//!
//! Pure and deterministic: time is each message's capture time, passed in. For a rule over
//! predictions, an **episode** begins with the first frame that matches (the label or class,
//! at `min_score` or more, inside the zone) and ends with the first frame that does not
//! (skipped frames count neither way). It alerts once, when it has lasted `for_frames` frames
//! and `for_seconds`; an episode that begins within `cooldown` of the end of the last alerted
//! one continues it (no new alert). A prediction older than the newest one seen for the rule
//! and camera is ignored (predictor replicas may publish out of order). A rule over changes
//! alerts on each change to its label (or each arrival of its class), unless the last alert of
//! that rule and camera is less than `cooldown` old.
//!
//! [`Engine::on_prediction`] and [`Engine::on_change`] only compute a [`Step`] (the alerts
//! and the new states); [`Engine::apply`] keeps the states once the alerts were published, so
//! a message handled again after a failed publish decides the same way.

use std::collections::HashMap;

use lookout_proto::{
    objects,
    v1::{Alert, AlertSource, BoundingBox, ModelKind, Prediction, PredictionChange, SkipReason},
};

use crate::rules::{Point, Rule, Rules, Source, Target};

/// A rule's state for one camera.
#[derive(Debug, Clone, PartialEq)]
enum Track {
    /// Nothing going on.
    Idle {
        /// Newest frame seen.
        last_sequence: u64,
    },
    /// Matching, not for long enough yet.
    Building { last_sequence: u64, first_sequence: u64, first_time_ms: i64, frames: u32 },
    /// Alerted; `ended_ms` is the capture time of the frame that ended it, while it is over.
    Alerted { last_sequence: u64, ended_ms: Option<i64> },
    /// A rule over changes alerted at this time.
    Fired { at_ms: i64 },
}

impl Track {
    fn last_sequence(&self) -> Option<u64> {
        match self {
            Self::Idle { last_sequence }
            | Self::Building { last_sequence, .. }
            | Self::Alerted { last_sequence, .. } => Some(*last_sequence),
            Self::Fired { .. } => None,
        }
    }
}

type Key = (usize, String);

/// What handling one message decided.
#[derive(Debug, Default)]
pub struct Step {
    /// Alerts to publish (without `alert_time` and `trace_id`, which the caller fills in).
    pub alerts: Vec<Alert>,
    updates: Vec<(Key, Track)>,
}

/// The rules and each rule's state per camera.
#[derive(Debug, Default)]
pub struct Engine {
    rules: Rules,
    tracks: HashMap<Key, Track>,
}

/// The best match of a rule in one prediction.
struct Hit {
    score: f32,
    bbox: Option<BoundingBox>,
}

impl Engine {
    /// An engine with no state.
    pub fn new(rules: Rules) -> Self {
        Self { rules, tracks: HashMap::new() }
    }

    /// The rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Decides what `prediction`, captured at `time_ms` (Unix milliseconds), does.
    pub fn on_prediction(&self, prediction: &Prediction, time_ms: i64) -> Step {
        let mut step = Step::default();
        if prediction.skipped != SkipReason::Unspecified as i32 {
            return step;
        }
        let camera = &prediction.camera_id;
        let model = prediction.model.as_ref();
        let detector = model.is_some_and(|m| m.kind == ModelKind::Detection as i32);
        let sequence = prediction.frame_sequence;
        for (index, rule) in self.rules.as_slice().iter().enumerate() {
            let kind_fits = matches!(rule.target, Target::Class(_)) == detector;
            if rule.source != Source::Predictions
                || !kind_fits
                || !rule.applies_to(camera)
                || !rule.applies_to_model(model.map_or("", |m| m.name.as_str()))
            {
                continue;
            }
            let key = (index, camera.clone());
            let track = self.tracks.get(&key).cloned();
            if track.as_ref().and_then(Track::last_sequence).is_some_and(|s| s >= sequence) {
                continue;
            }
            let hit = best_hit(rule, prediction);
            let (next, fire) = advance(rule, track, sequence, time_ms, hit.is_some());
            if let (Some((first_sequence, first_time_ms)), Some(hit)) = (fire, hit) {
                step.alerts.push(Alert {
                    rule: rule.name.clone(),
                    camera_id: camera.clone(),
                    label: rule.target.name().to_owned(),
                    score: hit.score,
                    first_sequence,
                    first_time: Some(lookout_proto::timestamp_from_millis(first_time_ms)),
                    last_sequence: sequence,
                    last_time: Some(lookout_proto::timestamp_from_millis(time_ms)),
                    r#box: hit.bbox,
                    episode_id: episode_id(&rule.name, camera, first_sequence),
                    model: prediction.model.clone(),
                    source: AlertSource::Predictions as i32,
                    ..Default::default()
                });
            }
            step.updates.push((key, next));
        }
        step
    }

    /// Decides what `change`, captured at `time_ms` (Unix milliseconds), does.
    pub fn on_change(&self, change: &PredictionChange, time_ms: i64) -> Step {
        let mut step = Step::default();
        let camera = &change.camera_id;
        let Some(current) = change.current.as_ref() else { return step };
        let model = change.model.as_ref().map_or("", |m| m.name.as_str());
        for (index, rule) in self.rules.as_slice().iter().enumerate() {
            if rule.source != Source::Changes
                || !rule.applies_to(camera)
                || !rule.applies_to_model(model)
            {
                continue;
            }
            let matched = match &rule.target {
                Target::Label(l) => {
                    !objects::is_present(current)
                        && current.name == *l
                        && current.score >= rule.min_score
                }
                Target::Class(c) => {
                    let before = change.previous.as_ref().map_or("", |p| p.name.as_str());
                    objects::is_present(current)
                        && has_class(&current.name, c)
                        && !has_class(before, c)
                }
            };
            if !matched {
                continue;
            }
            let key = (index, camera.clone());
            let cooling = match self.tracks.get(&key) {
                Some(Track::Fired { at_ms }) => time_ms < at_ms.saturating_add(millis(rule)),
                _ => false,
            };
            if cooling {
                continue;
            }
            let sequence = change.frame_sequence;
            let time = Some(lookout_proto::timestamp_from_millis(time_ms));
            step.alerts.push(Alert {
                rule: rule.name.clone(),
                camera_id: camera.clone(),
                label: rule.target.name().to_owned(),
                score: current.score,
                first_sequence: sequence,
                first_time: time,
                last_sequence: sequence,
                last_time: time,
                episode_id: episode_id(&rule.name, camera, sequence),
                model: change.model.clone(),
                source: AlertSource::Changes as i32,
                ..Default::default()
            });
            step.updates.push((key, Track::Fired { at_ms: time_ms }));
        }
        step
    }

    /// Keeps the states a step decided (after its alerts were published).
    pub fn apply(&mut self, step: Step) {
        for (key, track) in step.updates {
            self.tracks.insert(key, track);
        }
    }
}

/// The episode id every copy of one episode's alert carries.
pub fn episode_id(rule: &str, camera: &str, first_sequence: u64) -> String {
    format!("{rule}/{camera}/{first_sequence}")
}

fn millis(rule: &Rule) -> i64 {
    i64::try_from(rule.cooldown.as_millis()).unwrap_or(i64::MAX)
}

fn has_class(set: &str, class: &str) -> bool {
    set.split(objects::SEPARATOR).any(|c| c == class)
}

/// The best-scoring match of `rule` in `prediction`.
fn best_hit(rule: &Rule, prediction: &Prediction) -> Option<Hit> {
    match &rule.target {
        Target::Label(label) => prediction
            .top_k
            .iter()
            .filter(|l| l.name == *label && l.score >= rule.min_score)
            .map(|l| Hit { score: l.score, bbox: None })
            .max_by(|a, b| a.score.total_cmp(&b.score)),
        Target::Class(class) => prediction
            .detections
            .iter()
            .filter_map(|d| {
                let label = d.label.as_ref()?;
                (label.name == *class && label.score >= rule.min_score).then_some(())?;
                let in_zone = match (&rule.zone, &d.r#box) {
                    (None, _) => true,
                    (Some(zone), Some(b)) => {
                        zone.contains(Point { x: b.x + b.width / 2.0, y: b.y + b.height })
                    }
                    (Some(_), None) => false,
                };
                in_zone.then_some(Hit { score: label.score, bbox: d.r#box })
            })
            .max_by(|a, b| a.score.total_cmp(&b.score)),
    }
}

/// The next state of a rule over predictions for a frame, and the episode's first frame and
/// time when the frame fires the alert.
fn advance(
    rule: &Rule,
    track: Option<Track>,
    sequence: u64,
    time_ms: i64,
    hit: bool,
) -> (Track, Option<(u64, i64)>) {
    let idle = Track::Idle { last_sequence: sequence };
    let track = match track {
        // The cool-down is over: start afresh.
        Some(Track::Alerted { ended_ms: Some(end), .. })
            if time_ms >= end.saturating_add(millis(rule)) =>
        {
            None
        }
        other => other,
    };
    match (track, hit) {
        (Some(Track::Alerted { ended_ms: None, .. }), true) => {
            (Track::Alerted { last_sequence: sequence, ended_ms: None }, None)
        }
        (Some(Track::Alerted { ended_ms: None, .. }), false) => {
            (Track::Alerted { last_sequence: sequence, ended_ms: Some(time_ms) }, None)
        }
        // Within the cool-down: a new match continues the alerted episode.
        (Some(Track::Alerted { ended_ms: Some(end), .. }), hit) => {
            let ended_ms = if hit { None } else { Some(end) };
            (Track::Alerted { last_sequence: sequence, ended_ms }, None)
        }
        (_, false) => (idle, None),
        (Some(Track::Building { first_sequence, first_time_ms, frames, .. }), true) => {
            build(rule, sequence, time_ms, first_sequence, first_time_ms, frames + 1)
        }
        (_, true) => build(rule, sequence, time_ms, sequence, time_ms, 1),
    }
}

fn build(
    rule: &Rule,
    sequence: u64,
    time_ms: i64,
    first_sequence: u64,
    first_time_ms: i64,
    frames: u32,
) -> (Track, Option<(u64, i64)>) {
    let lasted = u128::try_from(time_ms.saturating_sub(first_time_ms)).unwrap_or(0);
    if frames >= rule.for_frames && lasted >= rule.for_duration.as_millis() {
        let alerted = Track::Alerted { last_sequence: sequence, ended_ms: None };
        (alerted, Some((first_sequence, first_time_ms)))
    } else {
        (Track::Building { last_sequence: sequence, first_sequence, first_time_ms, frames }, None)
    }
}

#[cfg(test)]
mod tests {
    use lookout_proto::v1::{Detection, Label, ModelRef};

    use super::*;

    const RULES: &str = r#"
[[alert]]
name = "cat"
label = "cat"
min_score = 0.5
for_frames = 3
cooldown = "2s"

[[alert]]
name = "person-below"
class = "person"
for_seconds = 1
zone = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]
cooldown = 0

[[alert]]
name = "car-arrives"
class = "car"
source = "changes"
cooldown = "10s"
"#;

    fn engine() -> Engine {
        Engine::new(Rules::parse(RULES, "t.toml").unwrap())
    }

    fn label(name: &str, score: f32) -> Label {
        Label { class_id: 1, name: name.into(), score }
    }

    fn predicted(camera: &str, seq: u64, kind: ModelKind) -> Prediction {
        let model = ModelRef { name: "m".into(), kind: kind as i32, ..Default::default() };
        Prediction {
            camera_id: camera.into(),
            frame_sequence: seq,
            model: Some(model),
            ..Default::default()
        }
    }

    fn classified(seq: u64, name: &str, score: f32) -> Prediction {
        Prediction {
            top_k: vec![label(name, score)],
            ..predicted("door", seq, ModelKind::Classification)
        }
    }

    fn detected(seq: u64, y: f32) -> Prediction {
        let bbox = BoundingBox { x: 0.4, y, width: 0.2, height: 0.2 };
        let person = Detection { r#box: Some(bbox), label: Some(label("person", 0.9)) };
        Prediction { detections: vec![person], ..predicted("yard", seq, ModelKind::Detection) }
    }

    /// Feeds predictions at 100 ms a frame; returns the episode ids alerted, in order.
    fn run(engine: &mut Engine, predictions: &[Prediction]) -> Vec<String> {
        let mut alerted = Vec::new();
        for p in predictions {
            let step = engine.on_prediction(p, p.frame_sequence as i64 * 100);
            alerted.extend(step.alerts.iter().map(|a| a.episode_id.clone()));
            engine.apply(step);
        }
        alerted
    }

    #[test]
    fn an_episode_alerts_once_after_enough_frames() {
        let mut e = engine();
        let mut ps: Vec<_> = (1..=2).map(|s| classified(s, "cat", 0.9)).collect();
        assert!(run(&mut e, &ps).is_empty(), "two frames are not enough");
        ps = (3..=10).map(|s| classified(s, "cat", 0.9)).collect();
        assert_eq!(run(&mut e, &ps), vec!["cat/door/1"]);
    }

    #[test]
    fn low_scores_and_other_labels_break_an_episode() {
        let mut e = engine();
        let ps = vec![
            classified(1, "cat", 0.9),
            classified(2, "cat", 0.4),
            classified(3, "cat", 0.9),
            classified(4, "dog", 0.9),
            classified(5, "cat", 0.9),
            classified(6, "cat", 0.9),
        ];
        assert!(run(&mut e, &ps).is_empty());
        assert_eq!(run(&mut e, &[classified(7, "cat", 0.6)]), vec!["cat/door/5"]);
    }

    #[test]
    fn the_cooldown_merges_episodes_and_then_lets_a_new_one_alert() {
        let mut e = engine();
        let mut ps: Vec<_> = (1..=3).map(|s| classified(s, "cat", 0.9)).collect();
        ps.push(classified(4, "dog", 0.9)); // ends at 400 ms
        ps.extend((5..=8).map(|s| classified(s, "cat", 0.9))); // within 2 s: continues
        ps.push(classified(9, "dog", 0.9)); // ends at 900 ms
        assert_eq!(run(&mut e, &ps), vec!["cat/door/1"]);
        // 2.9 s: the cool-down is over; a new episode alerts after three frames.
        let later: Vec<_> = (29..=31).map(|s| classified(s, "cat", 0.9)).collect();
        assert_eq!(run(&mut e, &later), vec!["cat/door/29"]);
    }

    #[test]
    fn stale_and_skipped_predictions_change_nothing() {
        let mut e = engine();
        let mut skipped = classified(3, "dog", 0.9);
        skipped.skipped = SkipReason::TooOld as i32;
        let ps = vec![
            classified(1, "cat", 0.9),
            classified(5, "cat", 0.9),
            classified(4, "dog", 0.9), // older than 5: ignored
            skipped,
        ];
        assert!(run(&mut e, &ps).is_empty());
        assert_eq!(run(&mut e, &[classified(6, "cat", 0.9)]), vec!["cat/door/1"]);
    }

    #[test]
    fn an_unapplied_step_decides_the_same_again() {
        let mut e = engine();
        run(&mut e, &[classified(1, "cat", 0.9), classified(2, "cat", 0.9)]);
        let third = classified(3, "cat", 0.9);
        let first = e.on_prediction(&third, 300);
        assert_eq!(first.alerts.len(), 1);
        let again = e.on_prediction(&third, 300);
        assert_eq!(again.alerts, first.alerts, "a failed publish is retried with the same alert");
    }

    #[test]
    fn detections_count_inside_the_zone_for_long_enough() {
        let mut e = engine();
        // Feet at y = 0.3 + 0.2: above the zone.
        assert!(run(&mut e, &(1..=20).map(|s| detected(s, 0.1)).collect::<Vec<_>>()).is_empty());
        // In the zone from frame 21 (2.1 s); fires once 1 s has passed, at frame 31.
        let mut step = None;
        for s in 21..=40 {
            let st = e.on_prediction(&detected(s, 0.6), s as i64 * 100);
            if !st.alerts.is_empty() {
                assert!(step.is_none(), "one alert per episode");
                step = Some((s, st.alerts[0].clone()));
            }
            e.apply(st);
        }
        let (at, alert) = step.expect("the rule fired");
        assert_eq!(at, 31);
        assert_eq!((alert.first_sequence, alert.last_sequence), (21, 31));
        assert_eq!(alert.r#box.unwrap().y, 0.6);
        assert_eq!(alert.source, AlertSource::Predictions as i32);
        assert_eq!(alert.episode_id, "person-below/yard/21");
        // The classifier's rule does not look at a detector's predictions.
        assert!(e.rules().as_slice()[0].applies_to("yard"));
    }

    #[test]
    fn changes_alert_on_arrival_outside_the_cooldown() {
        let mut e = engine();
        let change = |seq: u64, before: &str, now: &str| PredictionChange {
            camera_id: "drive".into(),
            frame_sequence: seq,
            previous: Some(objects::present(before.split(", "))),
            current: Some(objects::present(now.split(", "))),
            ..Default::default()
        };
        let mut fired = Vec::new();
        for (seq, t, before, now) in [
            (1, 0, "", "car"),
            (2, 1_000, "car", "car, person"), // the car was already there
            (3, 2_000, "car, person", ""),
            (4, 5_000, "", "car"),        // within 10 s of the last alert
            (5, 12_000, "car", "person"), // left
            (6, 13_000, "person", "car, person"), // back, 13 s after the first alert
        ] {
            let step = e.on_change(&change(seq, before, now), t);
            fired.extend(step.alerts.iter().map(|a| a.first_sequence));
            e.apply(step);
        }
        assert_eq!(fired, vec![1, 6]);
    }
}
