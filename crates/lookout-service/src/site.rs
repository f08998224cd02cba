//! The site file: one TOML file (`lookout.toml`) that lists a site's cameras, its models and its
//! alert rules.
//!
//! ```toml
//! [[camera]]
//! id = "porch"                         # required: letters, digits, `.`, `_`, `-`; unique
//! source = "rtsp://cam.local/stream"   # required: what `--source` takes
//! fps = 10                             # optional, as --fps
//! size = "640x480"                     # optional, or width = 640 and height = 480
//! quality = 80                         # optional JPEG quality, as --jpeg-quality
//! max_width = 1280                     # optional, as --max-width (also max_height)
//! hold = "3s"                          # optional, as --hold (images: slideshows)
//! loop = true                          # optional, as --loop (file: sources)
//!
//! [[model]]
//! path = "models/efficientnet-lite0"   # a model folder or its model.toml
//! replicas = 2                         # optional, default 1
//! group = "classifier"                 # optional consumer group, default the folder's name
//!
//! [[alert]]                            # read by the alerts stage; kept here as it is
//! ```
//!
//! Relative paths (`file:`, `images:`, a model's `path`) are relative to the site file's
//! folder, so a file and the media next to it can move together. [`SiteFile::load`] refuses a
//! file with an unknown key, a value out of range or two cameras with one id, naming the file,
//! the line and the column ([`SiteError`]). The source syntax itself is the camera's to check;
//! it reports through [`SiteFile::error_at`] so its errors name the line too.

use std::{
    collections::BTreeSet,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

/// The largest frame side a camera accepts (as `--width`/`--height`).
const MAX_SIDE: u32 = 16384;

/// A site file that does not load: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", file.display(), at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct SiteError {
    /// The file.
    pub file: PathBuf,
    /// Line and column (from 1), when the error is at one place in the file.
    pub at: Option<(usize, usize)>,
    /// What is wrong, and what would be accepted.
    pub reason: String,
}

/// One `[[camera]]` of the site file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteCamera {
    /// Camera id in every frame.
    pub id: String,
    /// The source as written (`synthetic`, `images:…`, `rtsp://…`): the camera parses it.
    pub source: String,
    /// Where `source` is in the file, for [`SiteFile::error_at`].
    pub source_span: Range<usize>,
    /// Frames per second.
    pub fps: Option<f64>,
    /// Width asked of a webcam, or of the synthetic pattern.
    pub width: Option<u32>,
    /// Height asked of a webcam, or of the synthetic pattern.
    pub height: Option<u32>,
    /// JPEG quality, 1-100.
    pub quality: Option<u8>,
    /// Frames scaled down to at most this width.
    pub max_width: Option<u32>,
    /// Frames scaled down to at most this height.
    pub max_height: Option<u32>,
    /// How long each image of a slideshow is shown.
    pub hold: Option<Duration>,
    /// Play a `file:` source again and again.
    pub looped: bool,
}

/// One `[[model]]` of the site file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteModel {
    /// The model folder or its `model.toml`, relative paths resolved against the site file's
    /// folder.
    pub path: PathBuf,
    /// How many predictor processes share its frames.
    pub replicas: usize,
    /// Their consumer group on the frames topic.
    pub group: String,
}

/// A loaded and checked site file.
#[derive(Debug, Clone)]
pub struct SiteFile {
    path: PathBuf,
    text: String,
    /// The cameras, in file order; at least one, ids unique.
    pub cameras: Vec<SiteCamera>,
    /// The models, in file order; consumer groups unique.
    pub models: Vec<SiteModel>,
    /// The `[[alert]]` tables, as written: the alerts stage reads them.
    pub alerts: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    #[serde(default)]
    camera: Vec<RawCamera>,
    #[serde(default)]
    model: Vec<RawModel>,
    #[serde(default)]
    alert: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCamera {
    id: Spanned<String>,
    source: Spanned<String>,
    fps: Option<Spanned<f64>>,
    size: Option<Spanned<String>>,
    width: Option<Spanned<u32>>,
    height: Option<Spanned<u32>>,
    quality: Option<Spanned<u32>>,
    max_width: Option<Spanned<u32>>,
    max_height: Option<Spanned<u32>>,
    hold: Option<Spanned<String>>,
    #[serde(rename = "loop", default)]
    looped: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    path: Spanned<String>,
    #[serde(default = "one")]
    replicas: Spanned<usize>,
    group: Option<Spanned<String>>,
}

fn one() -> Spanned<usize> {
    Spanned::new(0..0, 1)
}

impl SiteFile {
    /// Reads and checks the site file at `path`.
    pub fn load(path: &Path) -> Result<Self, SiteError> {
        let text = std::fs::read_to_string(path).map_err(|e| SiteError {
            file: path.to_owned(),
            at: None,
            reason: format!("cannot read the site file: {e}"),
        })?;
        Self::parse(path, text)
    }

    /// Checks `text` as the site file at `path` (used for messages and relative paths).
    pub fn parse(path: &Path, text: String) -> Result<Self, SiteError> {
        let mut site = Self {
            path: path.to_owned(),
            text,
            cameras: Vec::new(),
            models: Vec::new(),
            alerts: Vec::new(),
        };
        let raw: RawSite = toml::from_str(&site.text).map_err(|e| {
            let reason = e.message().trim().to_owned();
            match e.span() {
                Some(span) => site.error_at(span, reason),
                None => site.error(reason),
            }
        })?;
        if raw.camera.is_empty() {
            return Err(site.error("no [[camera]] table: a site file lists at least one camera"));
        }
        let mut ids = BTreeSet::new();
        for camera in raw.camera {
            let id_span = camera.id.span();
            let checked = site.camera(camera)?;
            if !ids.insert(checked.id.clone()) {
                return Err(site.error_at(
                    id_span,
                    format!("camera id {:?} is used twice: each camera needs its own", checked.id),
                ));
            }
            site.cameras.push(checked);
        }
        let mut groups = BTreeSet::new();
        for model in raw.model {
            let span = model.path.span();
            let checked = site.model(model)?;
            if !groups.insert(checked.group.clone()) {
                return Err(site.error_at(
                    span,
                    format!(
                        "consumer group {:?} is used by two models: they would share the frames \
                         instead of each labelling all of them; give one a `group`",
                        checked.group
                    ),
                ));
            }
            site.models.push(checked);
        }
        site.alerts = raw.alert;
        Ok(site)
    }

    /// The site file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path` as written in the file, resolved: relative paths are relative to the site file's
    /// folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    /// An error at `span` (byte offsets in the file): the file, its line and column, `reason`.
    pub fn error_at(&self, span: Range<usize>, reason: impl Into<String>) -> SiteError {
        SiteError {
            file: self.path.clone(),
            at: Some(line_col(&self.text, span.start)),
            reason: reason.into(),
        }
    }

    fn error(&self, reason: impl Into<String>) -> SiteError {
        SiteError { file: self.path.clone(), at: None, reason: reason.into() }
    }

    fn camera(&self, raw: RawCamera) -> Result<SiteCamera, SiteError> {
        let id_span = raw.id.span();
        let id = raw.id.into_inner();
        if id.is_empty()
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(self.error_at(
                id_span,
                format!("camera id {id:?}: use letters, digits, `.`, `_` and `-` only"),
            ));
        }
        let source_span = raw.source.span();
        let source = raw.source.into_inner();
        if source.trim().is_empty() {
            return Err(self.error_at(source_span, format!("camera {id}: the source is empty")));
        }
        let fps = match raw.fps {
            Some(f)
                if !(f.get_ref().is_finite() && *f.get_ref() > 0.0 && *f.get_ref() <= 1000.0) =>
            {
                return Err(self.error_at(
                    f.span(),
                    format!("camera {id}: fps must be above 0 and at most 1000"),
                ));
            }
            f => f.map(Spanned::into_inner),
        };
        let side = |v: Option<Spanned<u32>>, what: &str| match v {
            Some(s) if *s.get_ref() == 0 || *s.get_ref() > MAX_SIDE => Err(self.error_at(
                s.span(),
                format!("camera {id}: {what} must be between 1 and {MAX_SIDE} pixels"),
            )),
            s => Ok(s.map(Spanned::into_inner)),
        };
        let (width, height) = match raw.size {
            Some(size) => {
                if let Some(given) = raw.width.as_ref().or(raw.height.as_ref()) {
                    return Err(self.error_at(
                        given.span(),
                        format!("camera {id}: give either size or width and height, not both"),
                    ));
                }
                let (w, h) = parse_size(size.get_ref()).map_err(|reason| {
                    self.error_at(size.span(), format!("camera {id}: {reason}"))
                })?;
                (Some(w), Some(h))
            }
            None => (side(raw.width, "width")?, side(raw.height, "height")?),
        };
        let quality = match raw.quality {
            None => None,
            Some(q) => match u8::try_from(*q.get_ref()) {
                Ok(q @ 1..=100) => Some(q),
                _ => {
                    return Err(self.error_at(
                        q.span(),
                        format!("camera {id}: quality must be between 1 and 100"),
                    ));
                }
            },
        };
        let hold = match raw.hold {
            None => None,
            Some(h) => match crate::parse_duration(h.get_ref()) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => {
                    return Err(self.error_at(
                        h.span(),
                        format!("camera {id}: hold must be longer than zero"),
                    ));
                }
                Err(reason) => {
                    return Err(self.error_at(h.span(), format!("camera {id}: hold: {reason}")));
                }
            },
        };
        Ok(SiteCamera {
            fps,
            width,
            height,
            quality,
            max_width: side(raw.max_width, "max_width")?,
            max_height: side(raw.max_height, "max_height")?,
            hold,
            looped: raw.looped,
            source,
            source_span,
            id,
        })
    }

    fn model(&self, raw: RawModel) -> Result<SiteModel, SiteError> {
        let path = self.resolve(Path::new(raw.path.get_ref()));
        if raw.path.get_ref().trim().is_empty() {
            return Err(self.error_at(raw.path.span(), "a model's path is empty"));
        }
        if *raw.replicas.get_ref() == 0 {
            return Err(self.error_at(
                raw.replicas.span(),
                "replicas must be at least 1 (leave a model out to run none)",
            ));
        }
        let group = match raw.group {
            Some(g) if g.get_ref().trim().is_empty() => {
                return Err(self.error_at(g.span(), "a model's group is empty"));
            }
            Some(g) => g.into_inner(),
            None => model_name(&path),
        };
        Ok(SiteModel { path, replicas: raw.replicas.into_inner(), group })
    }
}

/// The default consumer group of a model: its folder's name (`models/x` or `models/x/model.toml`
/// → `x`).
fn model_name(path: &Path) -> String {
    let folder =
        if path.extension().is_some_and(|e| e == "toml") { path.parent() } else { Some(path) };
    folder
        .and_then(Path::file_name)
        .map_or_else(|| "predictor".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// `640x480` → (640, 480).
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let bad =
        || format!("size {s:?}: expected WIDTHxHEIGHT, e.g. \"640x480\", each 1 to {MAX_SIDE}");
    let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let side = |v: &str| v.trim().parse::<u32>().ok().filter(|n| (1..=MAX_SIDE).contains(n));
    match (side(w), side(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(bad()),
    }
}

/// Line and column (from 1, the column in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SiteFile, SiteError> {
        SiteFile::parse(Path::new("/etc/lookout/site.toml"), text.to_owned())
    }

    fn refused(text: &str) -> String {
        parse(text).expect_err("refused").to_string()
    }

    const GOOD: &str = r#"
[[camera]]
id = "porch"
source = "rtsp://cam.local/stream"
fps = 12.5
size = "640x480"
quality = 70
max_width = 320
hold = "500ms"

[[camera]]
id = "hall"
source = "file:clips/hall.mp4"
width = 800
loop = true

[[model]]
path = "models/efficientnet-lite0"
replicas = 2

[[model]]
path = "/opt/models/ssd/model.toml"
group = "detector"

[[alert]]
camera = "porch"
label = "person"
min_score = 0.8
"#;

    #[test]
    fn a_good_file_loads_with_every_setting() {
        let site = parse(GOOD).unwrap();
        let [porch, hall] = &site.cameras[..] else { panic!("two cameras: {site:?}") };
        assert_eq!(porch.id, "porch");
        assert_eq!(porch.source, "rtsp://cam.local/stream");
        assert_eq!(&GOOD[porch.source_span.clone()], "\"rtsp://cam.local/stream\"");
        assert_eq!(porch.fps, Some(12.5));
        assert_eq!((porch.width, porch.height), (Some(640), Some(480)));
        assert_eq!(porch.quality, Some(70));
        assert_eq!((porch.max_width, porch.max_height), (Some(320), None));
        assert_eq!(porch.hold, Some(Duration::from_millis(500)));
        assert!(!porch.looped);
        assert_eq!((hall.width, hall.height, hall.looped), (Some(800), None, true));
        assert_eq!(
            site.models,
            [
                SiteModel {
                    path: PathBuf::from("/etc/lookout/models/efficientnet-lite0"),
                    replicas: 2,
                    group: "efficientnet-lite0".into(),
                },
                SiteModel {
                    path: PathBuf::from("/opt/models/ssd/model.toml"),
                    replicas: 1,
                    group: "detector".into(),
                },
            ]
        );
        assert_eq!(site.alerts.len(), 1, "alert rules are kept as written");
        assert_eq!(site.alerts[0]["label"].as_str(), Some("person"));
        assert_eq!(site.resolve(Path::new("clips/a.mp4")), Path::new("/etc/lookout/clips/a.mp4"));
        assert_eq!(site.resolve(Path::new("/srv/a.mp4")), Path::new("/srv/a.mp4"));
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line_and_column() {
        let text = "[[camera]]\nid = \"a\"\nsource = \"synthetic\"\n  fsp = 5\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.at, Some((4, 3)), "{e}");
        assert!(e.reason.contains("unknown field `fsp`"), "{e}");
        assert!(e.to_string().starts_with("/etc/lookout/site.toml:4:3: "), "{e}");

        let e = refused("[[cameras]]\nid = \"a\"\nsource = \"synthetic\"\n");
        assert!(e.contains(":1:") && e.contains("unknown field `cameras`"), "{e}");
        let e = refused("[[camera]]\nid = \"a\"\n");
        assert!(e.contains("missing field `source`"), "{e}");
        let e = refused(
            "[[camera]]\nid = \"a\"\nsource = \"synthetic\"\n[[model]]\npath = \"m\"\nreplica = 2\n",
        );
        assert!(e.contains(":6:1:") && e.contains("unknown field `replica`"), "{e}");
        let e = refused("[[camera]\n");
        assert!(e.contains(":1:"), "bad TOML has a line too: {e}");
    }

    #[test]
    fn bad_values_are_refused_where_they_are() {
        let cam =
            |extra: &str| format!("[[camera]]\nid = \"a\"\nsource = \"synthetic\"\n{extra}\n");
        for (extra, says) in [
            ("size = \"640*480\"", "expected WIDTHxHEIGHT"),
            ("size = \"0x480\"", "expected WIDTHxHEIGHT"),
            ("size = \"640x\"", "expected WIDTHxHEIGHT"),
            ("width = 320\nsize = \"640x480\"", "either size or width and height"),
            ("width = 0", "width must be between 1 and 16384"),
            ("fps = 0", "fps must be above 0"),
            ("fps = 5000", "fps must be above 0"),
            ("quality = 0", "quality must be between 1 and 100"),
            ("quality = 300", "quality must be between 1 and 100"),
            ("hold = \"2 fortnights\"", "hold"),
            ("hold = \"0s\"", "hold must be longer than zero"),
            ("fps = \"fast\"", "invalid type"),
        ] {
            let e = parse(&cam(extra)).unwrap_err();
            assert!(e.reason.contains(says), "{extra}: {e}");
            assert_eq!(e.at.map(|(line, _)| line), Some(4), "{extra}: {e}");
        }
        let e = refused("[[camera]]\nid = \"front door\"\nsource = \"synthetic\"\n");
        assert!(e.contains(":2:6:") && e.contains("letters, digits"), "{e}");
        let e = refused("[[camera]]\nid = \"a\"\nsource = \" \"\n");
        assert!(e.contains(":3:") && e.contains("source is empty"), "{e}");
    }

    #[test]
    fn duplicate_ids_and_groups_are_refused() {
        let e = refused(
            "[[camera]]\nid = \"a\"\nsource = \"synthetic\"\n\n[[camera]]\nid = \"a\"\nsource = \"webcam:0\"\n",
        );
        assert!(e.contains(":6:6:") && e.contains("\"a\" is used twice"), "{e}");
        let e = refused(
            "[[camera]]\nid = \"a\"\nsource = \"synthetic\"\n[[model]]\npath = \"m/x\"\n[[model]]\npath = \"n/x/model.toml\"\n",
        );
        assert!(e.contains(":7:") && e.contains("group \"x\" is used by two models"), "{e}");
        let e = refused(
            "[[camera]]\nid = \"a\"\nsource = \"synthetic\"\n[[model]]\npath = \"m\"\nreplicas = 0\n",
        );
        assert!(e.contains(":6:") && e.contains("replicas must be at least 1"), "{e}");
    }

    #[test]
    fn a_file_without_cameras_is_refused() {
        for text in ["", "[[model]]\npath = \"m\"\n", "camera = []\n"] {
            let e = parse(text).unwrap_err();
            assert!(e.reason.contains("no [[camera]]"), "{text:?}: {e}");
        }
        let e = SiteFile::load(Path::new("/nonexistent/lookout.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/lookout.toml: cannot read"), "{e}");
    }

    #[test]
    fn lines_and_columns_count_characters() {
        let text = "a\nbé = 1\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 2), (2, 1));
        assert_eq!(line_col(text, text.find('=').unwrap()), (2, 4));
        assert_eq!(line_col(text, 1000), (3, 1));
    }

    #[test]
    fn the_example_site_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/site/lookout.toml");
        let site = SiteFile::load(&path).unwrap();
        let ids: Vec<&str> = site.cameras.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["lobby", "kitchen", "pattern"]);
        for model in &site.models {
            assert!(model.path.join("model.toml").is_file(), "{model:?} is in the checkout");
        }
        let groups: Vec<&str> = site.models.iter().map(|m| m.group.as_str()).collect();
        assert_eq!(groups, ["predictor", "detector"]);
    }
}
