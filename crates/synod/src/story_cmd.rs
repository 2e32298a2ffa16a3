//! `synod story`: the seeds' stories as pictures of real simulated runs.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use synod_sim::stories;

#[derive(Args)]
pub struct StoryArgs {
    /// A story's name, or `list`.
    name: String,
    /// Write the run as a space-time diagram (SVG) into FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Write the run as one self-contained HTML page that replays it.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Seed of the run's latencies and the nodes' own choices (the faults
    /// are the story's).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: StoryArgs) -> Result<ExitCode, String> {
    if args.name == "list" {
        for s in stories::STORIES {
            println!("{:<18} {}", s.name, s.about);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(story) = stories::find(&args.name) else {
        let names: Vec<&str> = stories::STORIES.iter().map(|s| s.name).collect();
        return Err(format!(
            "no story {:?}; there are: {}",
            args.name,
            names.join(", ")
        ));
    };
    let report = stories::run(story, args.seed);
    let ending = stories::Ending::of(&report);
    let verdict = ending.word();
    println!("{}: {} ({verdict})", story.name, story.about);
    let timeline = report
        .timeline
        .as_ref()
        .ok_or("the run recorded no timeline")?;
    let title = format!("{}: {}", story.name, story.about);
    for (path, text) in [
        (
            &args.svg,
            args.svg
                .as_ref()
                .map(|_| synod_sim::picture::svg(timeline, &title)),
        ),
        (
            &args.html,
            args.html
                .as_ref()
                .map(|_| synod_sim::picture::html(timeline, &title)),
        ),
    ] {
        if let (Some(path), Some(text)) = (path, text) {
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("drew {} into {}", story.name, path.display());
        }
    }
    // A story that ends as told succeeds, even when what it tells is a
    // broken design deciding two values; one that ends otherwise is a bug.
    if ending != story.ends {
        return Err(format!(
            "{} was to end {}, and ended {verdict}",
            story.name,
            story.ends.word()
        ));
    }
    Ok(ExitCode::SUCCESS)
}
