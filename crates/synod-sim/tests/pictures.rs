//! The pictures in `docs/pictures/` are the stories as the code tells them
//! today: this test draws every story again and compares. When a change to
//! a protocol or to the drawing moves a picture, redraw them all with
//!
//! ```sh
//! scripts/pictures.sh
//! ```
//!
//! (which runs this test with `SYNOD_WRITE_PICTURES=1` and the `broken`
//! feature, so that Figure 8 shows Raft's rule broken), and look at what
//! changed before committing.

use std::path::PathBuf;
use synod_sim::picture;
use synod_sim::stories::{self, FIGURE_8_BROKEN, STORIES};

/// The seed the pictures are drawn with (`synod story`'s default).
const SEED: u64 = 1;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/pictures")
}

/// What `synod story NAME --svg F` writes.
fn draw(story: &stories::Story) -> String {
    let report = stories::run(story, SEED);
    let timeline = report.timeline.expect("a story records its timeline");
    picture::svg(&timeline, &format!("{}: {}", story.name, story.about))
}

#[test]
fn the_docs_pictures_are_the_stories_as_told_now() {
    let write = std::env::var_os("SYNOD_WRITE_PICTURES").is_some();
    if write {
        if !FIGURE_8_BROKEN {
            panic!("draw the pictures with --features broken (scripts/pictures.sh does)");
        }
        std::fs::create_dir_all(dir()).unwrap();
    }
    let mut stale = Vec::new();
    for story in STORIES {
        // Without the `broken` feature, Figure 8 is drawn with the rule
        // kept: not the picture the docs show, so not compared.
        if story.name == "raft-figure-8" && !FIGURE_8_BROKEN {
            continue;
        }
        let path = dir().join(format!("{}.svg", story.name));
        let svg = draw(story);
        if write {
            std::fs::write(&path, svg).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(svg.as_str()) {
            stale.push(story.name);
        }
    }
    assert!(
        stale.is_empty(),
        "docs/pictures/ no longer shows these stories as the code tells them: {stale:?}. \
         Redraw them with scripts/pictures.sh and look at the change."
    );
}

/// Every picture the tour shows exists, and every story has its place in
/// the tour.
#[test]
fn the_tour_shows_every_story() {
    let tour = std::fs::read_to_string(dir().join("../tour.md")).unwrap();
    for story in STORIES {
        let img = format!("(pictures/{}.svg)", story.name);
        assert!(
            tour.contains(&img),
            "docs/tour.md does not show {}",
            story.name
        );
        let command = format!("synod story {}", story.name);
        assert!(tour.contains(&command), "docs/tour.md lacks `{command}`");
    }
}
