//! Alert rules: the `[[alert]]` tables of a site file (`lookout.toml`), checked at start.
//!
//! ```toml
//! [[alert]]
//! name = "person-at-door"     # letters, digits, '-' and '_'; unique
//! camera = "door-*"           # a camera id or a glob; every camera when left out
//! class = "person"            # a detector's object class (or `label = "..."` for a classifier)
//! min_score = 0.6             # default 0.5
//! for_frames = 3              # held for at least 3 frames…
//! for_seconds = 1.5           # …and 1.5 s (capture time) before the alert fires
//! zone = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]  # the lower half of the frame
//! cooldown = "30s"            # an episode starting within 30 s of the last one's end continues it
//! ```
//!
//! Only the `[[alert]]` array is read; other top-level keys of the file (cameras, models) are
//! ignored. A rule that cannot work is refused with the file, the line of its table and the
//! reason ([`RulesError`]).

use std::{fmt, path::Path, time::Duration};

use serde::Deserialize;
use toml::Spanned;

/// Which topic a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Per-frame predictions: the rule must hold for `for_frames` and `for_seconds`.
    #[default]
    Predictions,
    /// Stored changes: a change to the label, or an object class that appeared, fires at once.
    Changes,
}

impl Source {
    /// The name used in rules files and payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Predictions => "predictions",
            Self::Changes => "changes",
        }
    }
}

/// What a rule looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A classifier's label (any of its top classes).
    Label(String),
    /// A detector's object class.
    Class(String),
}

impl Target {
    /// The label or class name.
    pub fn name(&self) -> &str {
        match self {
            Self::Label(n) | Self::Class(n) => n,
        }
    }
}

/// A point in normalised frame coordinates (x right, y down, both in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// From the left edge.
    pub x: f32,
    /// From the top edge.
    pub y: f32,
}

/// A polygon in normalised frame coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone(Vec<Point>);

impl Zone {
    /// Whether `p` lies inside the polygon (even-odd rule; points on an edge may go either
    /// way).
    pub fn contains(&self, p: Point) -> bool {
        let pts = &self.0;
        let mut inside = false;
        let mut j = pts.len() - 1;
        for i in 0..pts.len() {
            let (a, b) = (pts[i], pts[j]);
            if (a.y > p.y) != (b.y > p.y) && p.x < (b.x - a.x) * (p.y - a.y) / (b.y - a.y) + a.x {
                inside = !inside;
            }
            j = i;
        }
        inside
    }
}

/// One checked alert rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name; part of the MQTT topic and the episode id.
    pub name: String,
    /// Cameras the rule applies to; `None`: every camera.
    pub camera: Option<glob::Pattern>,
    /// The label or object class.
    pub target: Target,
    /// Only predictions or changes of this model; `None`: any.
    pub model: Option<String>,
    /// Lowest score that counts.
    pub min_score: f32,
    /// The watched topic.
    pub source: Source,
    /// Frames the rule must hold for before it fires (at least 1).
    pub for_frames: u32,
    /// Capture time the rule must hold for before it fires.
    pub for_duration: Duration,
    /// Where a detected object must stand (the middle of its box's bottom edge).
    pub zone: Option<Zone>,
    /// How long after an alerted episode's end a new episode counts as its continuation.
    pub cooldown: Duration,
}

impl Rule {
    /// Whether the rule applies to `camera`.
    pub fn applies_to(&self, camera: &str) -> bool {
        self.camera.as_ref().is_none_or(|p| p.matches(camera))
    }

    /// Whether the rule applies to predictions or changes of `model`.
    pub fn applies_to_model(&self, model: &str) -> bool {
        self.model.as_deref().is_none_or(|m| m == model)
    }
}

/// A rules file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, or a rule does not have the expected shape, or a rule cannot work.
    #[error("{path}:{line}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line of the error (of the rule's table for a rule that cannot work).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The rules of a file, in file order.
#[derive(Debug, Clone, Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// Reads the `[[alert]]` tables of the TOML file at `path`.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| RulesError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the `[[alert]]` tables of `text`; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, RulesError> {
        let invalid = |offset: usize, reason: String| RulesError::Invalid {
            path: path.to_owned(),
            line: line_of(text, offset),
            reason,
        };
        let file: SiteFile = toml::from_str(text).map_err(|e| {
            invalid(e.span().map_or(0, |s| s.start), e.message().trim_end().to_owned())
        })?;
        let mut rules: Vec<Rule> = Vec::with_capacity(file.alert.len());
        for table in file.alert {
            let start = table.span().start;
            let rule = table.into_inner().check().map_err(|reason| invalid(start, reason))?;
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(invalid(start, format!("a second rule named {:?}", rule.name)));
            }
            rules.push(rule);
        }
        Ok(Self(rules))
    }

    /// The rules, in file order.
    pub fn as_slice(&self) -> &[Rule] {
        &self.0
    }

    /// Whether any rule watches `source`.
    pub fn watch(&self, source: Source) -> bool {
        self.0.iter().any(|r| r.source == source)
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<Rule>> for Rules {
    fn from(rules: Vec<Rule>) -> Self {
        Self(rules)
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// The part of a site file this crate reads.
#[derive(Debug, Deserialize)]
struct SiteFile {
    #[serde(default)]
    alert: Vec<Spanned<RuleToml>>,
}

/// A duration as a number of seconds or a text such as `30s` or `5m`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationToml {
    Seconds(f64),
    Text(String),
}

impl DurationToml {
    fn get(&self, field: &str) -> Result<Duration, String> {
        match self {
            Self::Seconds(s) => Duration::try_from_secs_f64(*s)
                .map_err(|_| format!("{field}: {s} is not a number of seconds >= 0")),
            Self::Text(t) => {
                lookout_service::parse_duration(t).map_err(|e| format!("{field}: {e}"))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    name: String,
    camera: Option<String>,
    label: Option<String>,
    class: Option<String>,
    model: Option<String>,
    min_score: Option<f32>,
    #[serde(default)]
    source: Source,
    for_frames: Option<u32>,
    for_seconds: Option<DurationToml>,
    zone: Option<Vec<[f32; 2]>>,
    cooldown: Option<DurationToml>,
}

/// Default cool-down: flicker of a few seconds does not alert again.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Default lowest score.
const DEFAULT_MIN_SCORE: f32 = 0.5;

impl RuleToml {
    fn check(self) -> Result<Rule, String> {
        let name = self.name;
        let named = |reason: String| format!("rule {name:?}: {reason}");
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "rule name {name:?}: use letters, digits, '-' and '_' (it is part of MQTT topics)"
            ));
        }
        let target = match (self.label, self.class) {
            (Some(l), None) if !l.is_empty() => Target::Label(l),
            (None, Some(c)) if !c.is_empty() => Target::Class(c),
            (Some(_), Some(_)) => return Err(named("give `label` or `class`, not both".into())),
            _ => {
                return Err(named(
                    "give `label` (a classifier's) or `class` (a detector's object class)".into(),
                ));
            }
        };
        let camera = self
            .camera
            .map(|c| glob::Pattern::new(&c).map_err(|e| named(format!("camera {c:?}: {e}"))))
            .transpose()?;
        let min_score = self.min_score.unwrap_or(DEFAULT_MIN_SCORE);
        if !(0.0..=1.0).contains(&min_score) {
            return Err(named(format!("min_score {min_score} is not between 0 and 1")));
        }
        let for_frames = self.for_frames.unwrap_or(1);
        if for_frames == 0 {
            return Err(named("for_frames must be at least 1".into()));
        }
        let for_duration =
            self.for_seconds.map(|d| d.get("for_seconds")).transpose().map_err(named)?;
        let cooldown = self
            .cooldown
            .map(|d| d.get("cooldown"))
            .transpose()
            .map_err(named)?
            .unwrap_or(DEFAULT_COOLDOWN);
        let zone = self.zone.map(|points| check_zone(&points)).transpose().map_err(named)?;
        if zone.is_some() && !matches!(target, Target::Class(_)) {
            return Err(named("a zone needs a detector's `class` (boxes), not a `label`".into()));
        }
        let per_frame = self.for_frames.is_some() || for_duration.is_some() || zone.is_some();
        if self.source == Source::Changes && per_frame {
            return Err(named(
                "for_frames, for_seconds and zone apply to source = \"predictions\" only: a \
                 change fires at once"
                    .into(),
            ));
        }
        Ok(Rule {
            name,
            camera,
            target,
            model: self.model,
            min_score,
            source: self.source,
            for_frames,
            for_duration: for_duration.unwrap_or_default(),
            zone,
            cooldown,
        })
    }
}

fn check_zone(points: &[[f32; 2]]) -> Result<Zone, String> {
    if points.len() < 3 {
        return Err(format!("zone has {} points; a polygon needs at least 3", points.len()));
    }
    for [x, y] in points {
        if !(0.0..=1.0).contains(x) || !(0.0..=1.0).contains(y) {
            return Err(format!(
                "zone point [{x}, {y}] is outside the frame: coordinates are fractions of its \
                 width and height, from 0 to 1"
            ));
        }
    }
    Ok(Zone(points.iter().map(|&[x, y]| Point { x, y }).collect()))
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(l) => write!(f, "label {l}"),
            Self::Class(c) => write!(f, "class {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_site_file_has_a_working_rule() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/site/lookout.toml");
        let rules = Rules::load(&path).unwrap();
        let [rule] = rules.as_slice() else { panic!("one rule: {rules:?}") };
        assert_eq!(rule.name, "cat-in-lobby");
        assert!(rule.applies_to("lobby") && !rule.applies_to("kitchen"));
        assert_eq!(rule.target.name(), "cat");
        assert_eq!(rule.cooldown, Duration::from_secs(10));
    }

    fn error(text: &str) -> (usize, String) {
        match Rules::parse(text, "site.toml") {
            Err(RulesError::Invalid { line, reason, path }) => {
                assert_eq!(path, "site.toml");
                (line, reason)
            }
            other => panic!("expected an invalid file, got {other:?}"),
        }
    }

    #[test]
    fn only_alert_tables_are_read() {
        let text = r#"
[[camera]]
id = "door"
source = "/dev/video0"

[[model]]
dir = "models/yolo"

[[alert]]
name = "person-at-door"
camera = "door*"
class = "person"
min_score = 0.6
for_frames = 3
for_seconds = "1500ms"
zone = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]
cooldown = 10

[[alert]]
name = "cat"
label = "tabby"
source = "changes"
"#;
        let rules = Rules::parse(text, "site.toml").unwrap();
        let [door, cat] = rules.as_slice() else { panic!("two rules") };
        assert_eq!(door.target, Target::Class("person".into()));
        assert!(door.applies_to("door-1") && !door.applies_to("garden"));
        assert_eq!(door.for_frames, 3);
        assert_eq!(door.for_duration, Duration::from_millis(1500));
        assert_eq!(door.cooldown, Duration::from_secs(10));
        assert_eq!(cat.source, Source::Changes);
        assert!(cat.applies_to("anything"));
        assert_eq!((cat.min_score, cat.cooldown), (DEFAULT_MIN_SCORE, DEFAULT_COOLDOWN));
        assert!(rules.watch(Source::Changes) && rules.watch(Source::Predictions));
    }

    #[test]
    fn bad_rules_are_refused_with_their_line() {
        let (line, reason) =
            error("title = 1\n\n[[alert]]\nname = \"x\"\nclass = \"person\"\nmin_score = 1.5\n");
        assert_eq!(line, 3, "{reason}");
        assert!(reason.contains("min_score 1.5"), "{reason}");

        let (line, reason) = error("[[alert]]\nname = \"x\"\nlabel = \"cat\"\nfor_franes = 2\n");
        assert_eq!(line, 4, "{reason}");
        assert!(reason.contains("for_franes"), "{reason}");

        let (_, reason) =
            error("[[alert]]\nname = \"x\"\nlabel = \"cat\"\nzone = [[0,0],[1,0],[1,1]]\n");
        assert!(reason.contains("zone needs a detector"), "{reason}");

        let (_, reason) = error("[[alert]]\nname = \"x\"\nclass = \"cat\"\nzone = [[0,0],[1,0]]\n");
        assert!(reason.contains("at least 3"), "{reason}");

        let (_, reason) =
            error("[[alert]]\nname = \"x\"\nclass = \"cat\"\nzone = [[0,0],[2,0],[1,1]]\n");
        assert!(reason.contains("outside the frame"), "{reason}");

        let (_, reason) = error("[[alert]]\nname = \"a/b\"\nclass = \"cat\"\n");
        assert!(reason.contains("letters, digits"), "{reason}");

        let (_, reason) = error("[[alert]]\nname = \"x\"\n");
        assert!(reason.contains("give `label`"), "{reason}");

        let (line, reason) = error(
            "[[alert]]\nname = \"x\"\nclass = \"a\"\n\n[[alert]]\nname = \"x\"\nclass = \"b\"\n",
        );
        assert_eq!(line, 5);
        assert!(reason.contains("second rule"), "{reason}");

        let (_, reason) =
            error("[[alert]]\nname = \"x\"\nlabel = \"a\"\nsource = \"changes\"\nfor_frames = 2\n");
        assert!(reason.contains("predictions\" only"), "{reason}");

        let (line, _) = error("[[alert]]\nname = \"x\"\ncooldown = \"soon\"\nlabel = \"a\"\n");
        assert_eq!(line, 1);

        let (line, _) = error("[[alert]\nname = 1\n");
        assert_eq!(line, 1);
    }

    #[test]
    fn a_file_without_rules_has_none() {
        let rules = Rules::parse("[[camera]]\nid = \"a\"\n", "site.toml").unwrap();
        assert!(rules.is_empty());
    }

    #[test]
    fn zones_contain_what_is_inside() {
        let lower_half = check_zone(&[[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]).unwrap();
        assert!(lower_half.contains(Point { x: 0.5, y: 0.9 }));
        assert!(!lower_half.contains(Point { x: 0.5, y: 0.1 }));
        let triangle = check_zone(&[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).unwrap();
        assert!(triangle.contains(Point { x: 0.2, y: 0.2 }));
        assert!(!triangle.contains(Point { x: 0.8, y: 0.8 }));
    }
}
